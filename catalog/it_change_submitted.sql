DECLARE
    event_type text := 'it_change_' || NEW.status;
    actor_field text := CASE NEW.status WHEN 'submitted' THEN 'submitted_by'
                                        WHEN 'approved' THEN 'approved_by'
                                        WHEN 'rejected' THEN 'rejected_by'
                                        WHEN 'scheduled' THEN 'scheduled_by'
                                        WHEN 'implemented' THEN 'implemented_by'
                                        ELSE 'rolled_back_by' END;
    change jsonb := jsonb_build_object(
        'organization_id', NEW.organization_id,
        'change_id', NEW.change_id,
        'change_number', NEW.change_number,
        'title', NEW.title,
        'change_type', NEW.change_type,
        'risk_level', NEW.risk_level,
        'scheduled_start', NEW.scheduled_start,
        'scheduled_end', NEW.scheduled_end);
BEGIN
    events := events || ROW(event_type, jsonb_strip_nulls(change || jsonb_build_object(
        'event_type', event_type,
        -- OLD is NULL on insert: no previous status.
        'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
        'new_status', NEW.status,
        actor_field, NEW.updated_by,
        'approval_notes', CASE WHEN NEW.status = 'approved' THEN NEW.approval_notes END,
        'reason', CASE WHEN NEW.status IN ('rejected', 'rolled_back') THEN NEW.status_reason END)))::itrelay.new_event;
    IF NEW.status = 'submitted'
       AND (NEW.risk_level IN ('high', 'critical') OR NEW.cab_review_required) THEN
        events := events || ROW('it_cab_review_required', jsonb_strip_nulls(change || jsonb_build_object(
            'event_type', 'it_cab_review_required',
            'requested_by', NEW.updated_by,
            'reason', CASE WHEN NEW.cab_review_required THEN NEW.cab_review_reason
                           ELSE 'risk level ' || NEW.risk_level END)))::itrelay.new_event;
    END IF;
END;
