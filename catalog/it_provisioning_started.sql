DECLARE
    event_type text := CASE NEW.status WHEN 'in_progress' THEN 'it_provisioning_started'
                                       ELSE 'it_provisioning_completed' END;
BEGIN
    events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
        'event_type', event_type,
        'organization_id', NEW.organization_id,
        'onboarding_instance_id', NEW.onboarding_instance_id,
        'employee_id', NEW.employee_id,
        'previous_status', OLD.status,
        'new_status', NEW.status,
        'changed_by', NEW.updated_by,
        'completed_at', CASE WHEN NEW.status = 'completed' THEN NEW.completed_at END)))::itrelay.new_event;
END;
