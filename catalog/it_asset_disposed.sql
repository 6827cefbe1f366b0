BEGIN
    events := events || ROW('it_asset_disposed', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_asset_disposed',
        'asset_id', NEW.asset_id,
        'asset_tag', NEW.asset_tag,
        'asset_name', NEW.asset_name,
        'disposal_method', NEW.disposal_method,
        'disposal_date', NEW.disposal_date,
        'disposal_value', NEW.disposal_value,
        'data_sanitization_method', NEW.data_sanitization_method,
        'certificate_of_destruction', NEW.certificate_of_destruction,
        'disposed_by', NEW.updated_by,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
