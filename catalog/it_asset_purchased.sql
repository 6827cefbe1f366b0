BEGIN
    -- Once per asset, ever: clearing purchase_cost or purchase_date and setting it again
    -- does not capitalise the asset a second time.
    IF itrelay.claim_due('it_asset_purchased', NEW.asset_id, 'first set', 0) THEN
        events := events || ROW('it_asset_purchased', jsonb_strip_nulls(jsonb_build_object(
            'event_type', 'it_asset_purchased',
            'asset_id', NEW.asset_id,
            'asset_tag', NEW.asset_tag,
            'asset_type', NEW.asset_type,
            'asset_name', NEW.asset_name,
            'purchase_cost', NEW.purchase_cost,
            'purchase_date', NEW.purchase_date,
            'vendor_id', NEW.vendor_id,
            'po_number', NEW.po_number,
            'serial_number', NEW.serial_number,
            'warranty_months', NEW.warranty_months,
            'organization_id', NEW.organization_id,
            'site_id', NEW.site_id)))::itrelay.new_event;
    END IF;
END;
