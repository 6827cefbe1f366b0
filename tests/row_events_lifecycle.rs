//! Status-transition events of onboarding, access accounts, report runs and changes, end
//! to end: each transition the contract names yields exactly the expected message on each
//! subscriber's exchange and on no other; other transitions, unrelated updates and
//! re-saves yield nothing.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn provisioning_started_and_completed_follow_the_onboarding_status() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let instance = "0b000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_onboarding_instances (onboarding_instance_id, organization_id, employee_id, status)
             VALUES ('{instance}', '{ORG}', '{EMPLOYEE}', 'in_progress');
         UPDATE it_onboarding_instances SET status = 'pending' WHERE onboarding_instance_id = '{instance}';
         UPDATE it_onboarding_instances SET status = 'in_progress', updated_by = '{ACTOR}'
             WHERE onboarding_instance_id = '{instance}';
         UPDATE it_onboarding_instances SET status = 'in_progress' WHERE onboarding_instance_id = '{instance}';
         UPDATE it_onboarding_instances SET updated_by = '{EMPLOYEE}' WHERE onboarding_instance_id = '{instance}';
         UPDATE it_onboarding_instances SET status = 'completed', completed_at = '2026-03-09 17:00:00+00',
             updated_by = '{ACTOR}' WHERE onboarding_instance_id = '{instance}';
         UPDATE it_onboarding_instances SET status = 'completed' WHERE onboarding_instance_id = '{instance}';"
    ))
    .await;
    env.wait_until_settled(2).await;
    let both = &["it_provisioning_started", "it_provisioning_completed"][..];
    let messages = assert_routed(&env, &[("HR-03", both), ("PF-10", both)]).await;
    let started = messages
        .iter()
        .find(|m| m.routing_key == "it_provisioning_started")
        .expect("started");
    assert_eq!(
        without_timestamp(&started.body),
        json!({
            "event_type": "it_provisioning_started",
            "organization_id": ORG,
            "onboarding_instance_id": instance,
            "employee_id": EMPLOYEE,
            "previous_status": "pending",
            "new_status": "in_progress",
            "changed_by": ACTOR,
        })
    );
    let completed = messages
        .iter()
        .find(|m| m.routing_key == "it_provisioning_completed")
        .expect("completed");
    assert_eq!(completed.body["previous_status"], "in_progress");
    assert_eq!(completed.body["new_status"], "completed");
    let completed_at = completed.body["completed_at"]
        .as_str()
        .expect("completed_at");
    assert_eq!(
        time::OffsetDateTime::parse(completed_at, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339"),
        time::macros::datetime!(2026-03-09 17:00:00 UTC)
    );
}

#[tokio::test]
async fn account_provisioned_and_deactivated_follow_the_account_status() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let account = "0c000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_access_accounts (account_id, organization_id, employee_id, system_name, account_username)
             VALUES ('{account}', '{ORG}', '{EMPLOYEE}', 'Active Directory', 'dreyes');
         UPDATE it_access_accounts SET status = 'active', updated_by = '{ACTOR}' WHERE account_id = '{account}';
         UPDATE it_access_accounts SET status = 'active' WHERE account_id = '{account}';
         UPDATE it_access_accounts SET account_username = 'd.reyes' WHERE account_id = '{account}';
         UPDATE it_access_accounts SET status = 'suspended' WHERE account_id = '{account}';
         UPDATE it_access_accounts SET status = 'deactivated', deactivation_reason = 'Left the company',
             updated_by = '{ACTOR}' WHERE account_id = '{account}';
         UPDATE it_access_accounts SET deactivation_reason = 'Contract ended' WHERE account_id = '{account}';"
    ))
    .await;
    env.wait_until_settled(2).await;
    let both = &["it_account_provisioned", "it_account_deactivated"][..];
    let messages = assert_routed(
        &env,
        &[
            ("PF-10", both),
            ("Audit", both),
            ("GR", &["it_account_deactivated"]),
        ],
    )
    .await;
    let provisioned = messages
        .iter()
        .find(|m| m.routing_key == "it_account_provisioned")
        .expect("provisioned");
    assert_eq!(
        without_timestamp(&provisioned.body),
        json!({
            "event_type": "it_account_provisioned",
            "organization_id": ORG,
            "account_id": account,
            "employee_id": EMPLOYEE,
            "system_name": "Active Directory",
            "account_username": "dreyes",
            "previous_status": "pending",
            "new_status": "active",
            "changed_by": ACTOR,
        })
    );
    let deactivated = messages
        .iter()
        .find(|m| m.routing_key == "it_account_deactivated")
        .expect("deactivated");
    assert_eq!(
        without_timestamp(&deactivated.body),
        json!({
            "event_type": "it_account_deactivated",
            "organization_id": ORG,
            "account_id": account,
            "employee_id": EMPLOYEE,
            "system_name": "Active Directory",
            "account_username": "d.reyes",
            "previous_status": "suspended",
            "new_status": "deactivated",
            "changed_by": ACTOR,
            "reason": "Left the company",
        })
    );
}

#[tokio::test]
async fn report_runs_announce_their_output_or_their_failure() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let report = "0d000000-0000-4000-8000-000000000001";
    let run = "0d000000-0000-4000-8000-000000000002";
    let failed_run = "0d000000-0000-4000-8000-000000000003";
    let document = "0d000000-0000-4000-8000-000000000004";
    env.execute(&format!(
        "INSERT INTO it_report_runs (run_id, organization_id, report_id, report_name, format, requested_by)
             VALUES ('{run}', '{ORG}', '{report}', 'Asset inventory', 'xlsx', '{EMPLOYEE}');
         UPDATE it_report_runs SET status = 'running' WHERE run_id = '{run}';
         UPDATE it_report_runs SET status = 'completed', document_id = '{document}' WHERE run_id = '{run}';
         UPDATE it_report_runs SET status = 'completed' WHERE run_id = '{run}';
         INSERT INTO it_report_runs (run_id, organization_id, report_id, report_name, format, status,
                                     error_code, error_message, retryable, document_id)
             VALUES ('{failed_run}', '{ORG}', '{report}', 'Asset inventory', 'pdf', 'failed',
                     'timeout', 'Query exceeded 60 s', true, '{document}');"
    ))
    .await;
    env.wait_until_settled(2).await;
    let messages = assert_routed(
        &env,
        &[
            ("PF-10", &["it_report_generated", "it_report_failed"]),
            ("PF-11", &["it_report_generated"]),
        ],
    )
    .await;
    let generated = messages
        .iter()
        .find(|m| m.routing_key == "it_report_generated")
        .expect("generated");
    assert_eq!(
        without_timestamp(&generated.body),
        json!({
            "event_type": "it_report_generated",
            "organization_id": ORG,
            "report_id": report,
            "report_name": "Asset inventory",
            "run_id": run,
            "format": "xlsx",
            "document_id": document,
            "requested_by": EMPLOYEE,
        })
    );
    let failed = messages
        .iter()
        .find(|m| m.routing_key == "it_report_failed")
        .expect("failed");
    assert_eq!(
        without_timestamp(&failed.body),
        json!({
            "event_type": "it_report_failed",
            "organization_id": ORG,
            "report_id": report,
            "report_name": "Asset inventory",
            "run_id": failed_run,
            "format": "pdf",
            "error_code": "timeout",
            "error_message": "Query exceeded 60 s",
            "retryable": true,
        })
    );
}

#[tokio::test]
async fn change_lifecycle_and_cab_reviews() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let change = "0e000000-0000-4000-8000-000000000001";
    let risky = "0e000000-0000-4000-8000-000000000002";
    let flagged = "0e000000-0000-4000-8000-000000000003";
    env.execute(&format!(
        "SET TIME ZONE 'UTC';
         INSERT INTO it_changes (change_id, organization_id, change_number, title, change_type, risk_level)
             VALUES ('{change}', '{ORG}', 'CHG-1', 'Upgrade mail server', 'normal', 'low');
         UPDATE it_changes SET status = 'submitted', updated_by = '{EMPLOYEE}' WHERE change_id = '{change}';
         UPDATE it_changes SET title = 'Upgrade mail server to v9' WHERE change_id = '{change}';
         UPDATE it_changes SET status = 'submitted' WHERE change_id = '{change}';
         UPDATE it_changes SET status = 'approved', approval_notes = 'Go', status_reason = 'ignored',
             updated_by = '{ACTOR}' WHERE change_id = '{change}';
         UPDATE it_changes SET status = 'scheduled', scheduled_start = '2026-03-14 22:00:00+00',
             scheduled_end = '2026-03-15 02:00:00+00' WHERE change_id = '{change}';
         UPDATE it_changes SET status = 'implemented' WHERE change_id = '{change}';
         UPDATE it_changes SET status = 'rolled_back', status_reason = 'Mail flow broke' WHERE change_id = '{change}';
         INSERT INTO it_changes (change_id, organization_id, change_number, title, change_type, risk_level,
                                 status, updated_by)
             VALUES ('{risky}', '{ORG}', 'CHG-2', 'Core switch swap', 'emergency', 'critical', 'submitted',
                     '{EMPLOYEE}');
         INSERT INTO it_changes (change_id, organization_id, change_number, title, change_type, risk_level,
                                 cab_review_required, cab_review_reason)
             VALUES ('{flagged}', '{ORG}', 'CHG-3', 'Payroll DB patch', 'standard', 'medium', true,
                     'Touches payroll');
         UPDATE it_changes SET status = 'submitted', updated_by = '{ACTOR}' WHERE change_id = '{flagged}';
         UPDATE it_changes SET status = 'rejected', status_reason = 'No rollback plan', updated_by = '{ACTOR}'
             WHERE change_id = '{flagged}';"
    ))
    .await;
    env.wait_until_settled(10).await;
    let messages = assert_routed(
        &env,
        &[
            (
                "PF-10",
                &[
                    "it_change_submitted",
                    "it_change_approved",
                    "it_change_scheduled",
                    "it_change_implemented",
                    "it_change_rolled_back",
                    "it_change_submitted",
                    "it_cab_review_required",
                    "it_change_submitted",
                    "it_cab_review_required",
                    "it_change_rejected",
                ],
            ),
            ("IT-07", &["it_change_implemented"]),
            ("GR", &["it_change_rolled_back"]),
            ("IT-02", &["it_change_rolled_back"]),
        ],
    )
    .await;
    let body = |event_type: &str, change_id: &str| {
        messages
            .iter()
            .find(|m| m.routing_key == event_type && m.body["change_id"] == change_id)
            .map(|m| without_timestamp(&m.body))
            .expect("message")
    };
    let change_fields = json!({
        "organization_id": ORG,
        "change_id": change,
        "change_number": "CHG-1",
        "title": "Upgrade mail server to v9",
        "change_type": "normal",
        "risk_level": "low",
    });
    let with = |fields: serde_json::Value| {
        let mut merged = change_fields.clone();
        merged
            .as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        merged
    };
    let submitted = body("it_change_submitted", change);
    assert_eq!(submitted["previous_status"], "draft");
    assert_eq!(submitted["submitted_by"], EMPLOYEE);
    assert_eq!(
        body("it_change_approved", change),
        with(json!({
            "event_type": "it_change_approved",
            "previous_status": "submitted",
            "new_status": "approved",
            "approved_by": ACTOR,
            "approval_notes": "Go",
        }))
    );
    assert_eq!(
        body("it_change_rolled_back", change),
        with(json!({
            "event_type": "it_change_rolled_back",
            "previous_status": "implemented",
            "new_status": "rolled_back",
            "rolled_back_by": ACTOR,
            "scheduled_start": "2026-03-14T22:00:00+00:00",
            "scheduled_end": "2026-03-15T02:00:00+00:00",
            "reason": "Mail flow broke",
        }))
    );
    assert_eq!(body("it_change_scheduled", change)["scheduled_by"], ACTOR);
    assert_eq!(
        body("it_change_implemented", change)["implemented_by"],
        ACTOR
    );
    let risky_submitted = body("it_change_submitted", risky);
    assert!(risky_submitted.get("previous_status").is_none());
    assert_eq!(
        body("it_cab_review_required", risky),
        json!({
            "event_type": "it_cab_review_required",
            "organization_id": ORG,
            "change_id": risky,
            "change_number": "CHG-2",
            "title": "Core switch swap",
            "change_type": "emergency",
            "risk_level": "critical",
            "requested_by": EMPLOYEE,
            "reason": "risk level critical",
        })
    );
    assert_eq!(
        body("it_cab_review_required", flagged)["reason"],
        "Touches payroll"
    );
    let rejected = body("it_change_rejected", flagged);
    assert_eq!(rejected["rejected_by"], ACTOR);
    assert_eq!(rejected["reason"], "No rollback plan");
}
