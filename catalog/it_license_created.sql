BEGIN
    events := events || ROW('it_license_created', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_license_created',
        'license_id', NEW.license_id,
        'software_name', NEW.software_name,
        'software_vendor', NEW.software_vendor,
        'license_type', NEW.license_type,
        'license_key_ref', CASE WHEN NEW.license_key <> ''
            THEN 'it_licenses/' || NEW.license_id || '/license_key' END,
        'license_count', NEW.license_count,
        'cost_per_license', NEW.cost_per_license,
        'total_cost', NEW.license_count * NEW.cost_per_license,
        'purchase_date', NEW.purchase_date,
        'expiration_date', NEW.expiration_date,
        'vendor_id', NEW.vendor_id,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
