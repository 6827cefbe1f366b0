BEGIN
    events := events || ROW('it_asset_maintenance_required', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_asset_maintenance_required',
        'asset_id', NEW.asset_id,
        'maintenance_type', NEW.maintenance_type,
        'description', NEW.description,
        'priority', NEW.priority,
        'requested_by', NEW.requested_by,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
