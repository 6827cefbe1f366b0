BEGIN
    events := events || ROW('it_asset_assigned', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_asset_assigned',
        'asset_id', NEW.asset_id,
        'employee_id', NEW.employee_id,
        'assignment_date', NEW.assignment_date,
        'previous_assignee_id', NEW.previous_assignee_id,
        'location', CASE WHEN NEW.site_id IS NOT NULL THEN jsonb_build_object(
            'site_id', NEW.site_id,
            'building', NEW.building,
            'room', NEW.room) END,
        'organization_id', NEW.organization_id,
        'assigned_by', NEW.assigned_by)))::itrelay.new_event;
END;
