BEGIN
    events := events || ROW('it_purchase_request_submitted', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_purchase_request_submitted',
        'request_id', NEW.request_id,
        'request_number', NEW.request_number,
        'requester_id', NEW.requester_id,
        'request_type', NEW.request_type,
        'estimated_cost', NEW.estimated_cost,
        'justification', NEW.justification,
        'vendor_id', NEW.vendor_id,
        'organization_id', NEW.organization_id,
        'site_id', NEW.site_id)))::itrelay.new_event;
END;
