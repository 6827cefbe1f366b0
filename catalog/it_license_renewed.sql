BEGIN
    events := events || ROW('it_license_renewed', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_license_renewed',
        'license_id', NEW.license_id,
        'software_name', NEW.software_name,
        'software_vendor', NEW.software_vendor,
        'old_expiration_date', OLD.expiration_date,
        'new_expiration_date', NEW.expiration_date,
        'renewal_date', current_date,
        'renewal_cost', NEW.renewal_cost,
        'renewed_by', NEW.updated_by,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
