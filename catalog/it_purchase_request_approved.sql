BEGIN
    events := events || ROW('it_purchase_request_approved', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_purchase_request_approved',
        'request_id', NEW.request_id,
        'request_number', NEW.request_number,
        'requester_id', NEW.requester_id,
        'request_type', NEW.request_type,
        'estimated_cost', NEW.estimated_cost,
        'vendor_id', NEW.vendor_id,
        'approved_by', NEW.updated_by,
        'approved_at', now(),
        'approval_notes', NEW.approval_notes,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
