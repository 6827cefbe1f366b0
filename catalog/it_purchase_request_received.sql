DECLARE
    items jsonb;
BEGIN
    -- The request's items, from their table: beside the trigger's table unless mapped.
    EXECUTE format(
        'SELECT coalesce(jsonb_agg(jsonb_build_object(
                     ''item_description'', {{literal_column:it_purchase_request_items.item_description}},
                     ''quantity'', {{literal_column:it_purchase_request_items.quantity_received}},
                     ''serial_numbers'', {{literal_column:it_purchase_request_items.serial_numbers}})
                     ORDER BY {{literal_column:it_purchase_request_items.line_number}}), ''[]'')
         FROM %s
         WHERE {{literal_column:it_purchase_request_items.request_id}} = $1
           AND {{literal_column:it_purchase_request_items.quantity_received}} > 0', {{table:it_purchase_request_items}})
    INTO items
    USING NEW.request_id;
    events := events || ROW('it_purchase_request_received', jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_purchase_request_received',
        'request_id', NEW.request_id,
        'request_number', NEW.request_number,
        'po_number', NEW.po_number,
        'items_received', items,
        'received_by', NEW.updated_by,
        'received_date', NEW.received_date,
        'vendor_id', NEW.vendor_id,
        'organization_id', NEW.organization_id)))::itrelay.new_event;
END;
