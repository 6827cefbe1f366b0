BEGIN
    events := events || ROW('it_ticket_status_changed', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_ticket_status_changed',
        'ticket_id', NEW.ticket_id,
        'ticket_number', NEW.ticket_number,
        'old_status', OLD.status,
        'new_status', NEW.status,
        'requester_id', NEW.requester_id,
        'assigned_to_id', NEW.assigned_to_id,
        'changed_by', NEW.updated_by,
        'resolution_notes', NEW.resolution_notes,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
