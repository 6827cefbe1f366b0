DECLARE
    failed boolean := NEW.status = 'failed';
    event_type text := CASE WHEN failed THEN 'it_report_failed' ELSE 'it_report_generated' END;
BEGIN
    events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
        'event_type', event_type,
        'organization_id', NEW.organization_id,
        'report_id', NEW.report_id,
        'report_name', NEW.report_name,
        'run_id', NEW.run_id,
        'format', NEW.format,
        'document_id', CASE WHEN NOT failed THEN NEW.document_id END,
        'error_code', CASE WHEN failed THEN NEW.error_code END,
        'error_message', CASE WHEN failed THEN NEW.error_message END,
        'retryable', CASE WHEN failed THEN NEW.retryable END,
        'requested_by', NEW.requested_by)))::itrelay.new_event;
END;
