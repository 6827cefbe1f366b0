BEGIN
    events := events || ROW('it_security_incident_created', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_security_incident_created',
        'incident_id', NEW.incident_id,
        'incident_number', NEW.incident_number,
        'incident_type', NEW.incident_type,
        'severity', NEW.severity,
        'description', NEW.description,
        'affected_asset_ids', NEW.affected_asset_ids,
        'affected_user_ids', NEW.affected_user_ids,
        'detected_at', NEW.detected_at,
        'reported_by', NEW.reported_by,
        'organization_id', NEW.organization_id,
        'site_id', NEW.site_id)))::itrelay.new_event;
END;
