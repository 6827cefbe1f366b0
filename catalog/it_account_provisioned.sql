DECLARE
    event_type text := CASE NEW.status WHEN 'active' THEN 'it_account_provisioned'
                                       ELSE 'it_account_deactivated' END;
BEGIN
    events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
        'event_type', event_type,
        'organization_id', NEW.organization_id,
        'account_id', NEW.account_id,
        'employee_id', NEW.employee_id,
        'system_name', NEW.system_name,
        'account_username', NEW.account_username,
        'previous_status', OLD.status,
        'new_status', NEW.status,
        'changed_by', NEW.updated_by,
        'reason', CASE WHEN NEW.status = 'deactivated' THEN NEW.deactivation_reason END)))::itrelay.new_event;
END;
