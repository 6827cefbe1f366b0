BEGIN
    events := events || ROW('it_ticket_created', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_ticket_created',
        'ticket_id', NEW.ticket_id,
        'ticket_number', NEW.ticket_number,
        'category', NEW.category,
        'subcategory', NEW.subcategory,
        'priority', NEW.priority,
        'subject', NEW.subject,
        'description', NEW.description,
        'requester_id', NEW.requester_id,
        'affected_asset_id', NEW.affected_asset_id,
        'organization_id', NEW.organization_id,
        'site_id', NEW.site_id)))::itrelay.new_event;
END;
