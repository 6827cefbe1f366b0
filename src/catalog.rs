//! The event catalog: what each IT event type is, where it comes from, and its schema.
//!
//! Facts here come from the IT module's integration contract. Subscribers are not here:
//! they are configuration (`[routes]` in `config/default.toml`), defaulting to the contract.

/// A reference table the relay reads to fill in names a trigger does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// `it_vendors`, by `vendor_id`: `vendor_name`.
    Vendor,
    /// `employees`, by `employee_id`: `employee_name`, `email`.
    Employee,
    /// `it_assets`, by `asset_id`: `asset_tag`, `asset_name`, `asset_type`, `location`.
    Asset,
}

impl Reference {
    pub fn table(self) -> &'static str {
        match self {
            Reference::Vendor => "it_vendors",
            Reference::Employee => "employees",
            Reference::Asset => "it_assets",
        }
    }
}

/// Fill payload fields from the reference row whose id is in `key`.
#[derive(Debug)]
pub struct Enrichment {
    /// Payload field holding the reference row's id (a UUID).
    pub key: &'static str,
    pub reference: Reference,
    /// `(payload field, reference column)` pairs, filled when the payload lacks them.
    pub fills: &'static [(&'static str, &'static str)],
}

/// One event type of the catalog.
#[derive(Debug)]
pub struct EventSpec {
    pub event_type: &'static str,
    /// Human name, e.g. "IT Asset Purchased".
    pub name: &'static str,
    /// The IT sub-module that owns it, e.g. "IT-01 Asset Management".
    pub category: &'static str,
    /// The business table whose trigger records it.
    pub source_table: &'static str,
    /// When the trigger fires, in words.
    pub condition: &'static str,
    /// Payload field naming the entity events are ordered by.
    pub entity_key: &'static str,
    pub enrichments: &'static [Enrichment],
    /// The JSON Schema of the published body (`schemas/<event_type>.v1.json`).
    pub schema: &'static str,
}

impl EventSpec {
    /// The versioned schema reference, `payload.<PascalName>.v1`.
    pub fn schema_ref(&self) -> String {
        let pascal: String = self
            .event_type
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        format!("payload.{pascal}.v1")
    }
}

const VENDOR_NAME: Enrichment = Enrichment {
    key: "vendor_id",
    reference: Reference::Vendor,
    fills: &[("vendor_name", "vendor_name")],
};

pub static EVENTS: &[EventSpec] = &[
    // Time-based events: recorded by the scans of sql/install.sql (`itrelay.scan_due_events`),
    // not by a trigger; the source table is the table scanned.
    EventSpec {
        event_type: "it_contract_expiring",
        name: "IT Contract Expiring",
        category: "IT-03 Vendor Management",
        source_table: "it_vendor_contracts",
        condition: "time-based scan: an active contract within 90 days of expiration, once at each of 90/60/30/14/7 days",
        entity_key: "contract_id",
        enrichments: &[VENDOR_NAME],
        schema: include_str!("../schemas/it_contract_expiring.v1.json"),
    },
    EventSpec {
        event_type: "it_license_expiring",
        name: "IT License Expiring",
        category: "IT-04 Software License Management",
        source_table: "it_licenses",
        condition: "time-based scan: a license within 90 days of expiration, once at each of 90/60/30/14/7 days",
        entity_key: "license_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_license_expiring.v1.json"),
    },
    EventSpec {
        event_type: "it_sla_breached",
        name: "IT SLA Breached",
        category: "IT-02 Support & Ticketing",
        source_table: "it_tickets",
        condition: "time-based scan: a ticket's response or resolution target (it_sla_policies) passed unmet, once per target",
        entity_key: "ticket_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_sla_breached.v1.json"),
    },
    EventSpec {
        event_type: "it_patch_deployment_overdue",
        name: "IT Patch Deployment Overdue",
        category: "IT-05 Security & Compliance",
        source_table: "it_patches",
        condition: "time-based scan: target date passed and not deployed, once per target date",
        entity_key: "patch_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_patch_deployment_overdue.v1.json"),
    },
    EventSpec {
        event_type: "it_license_compliance_alert",
        name: "IT License Compliance Alert",
        category: "IT-04 Software License Management",
        source_table: "it_licenses",
        condition: "time-based scan: it_check_license_compliance() reports over-deployment or under-utilization, once per level",
        entity_key: "license_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_license_compliance_alert.v1.json"),
    },
    EventSpec {
        event_type: "it_asset_purchased",
        name: "IT Asset Purchased",
        category: "IT-01 Asset Management",
        source_table: "it_assets",
        condition: "insert or update where purchase_cost and purchase_date are first both set",
        entity_key: "asset_id",
        enrichments: &[VENDOR_NAME],
        schema: include_str!("../schemas/it_asset_purchased.v1.json"),
    },
    EventSpec {
        event_type: "it_asset_assigned",
        name: "IT Asset Assigned",
        category: "IT-01 Asset Management",
        source_table: "it_asset_assignments",
        condition: "insert",
        entity_key: "asset_id",
        enrichments: &[
            Enrichment {
                key: "asset_id",
                reference: Reference::Asset,
                fills: &[
                    ("asset_tag", "asset_tag"),
                    ("asset_name", "asset_name"),
                    ("asset_type", "asset_type"),
                    ("location", "location"),
                ],
            },
            Enrichment {
                key: "employee_id",
                reference: Reference::Employee,
                fills: &[("employee_name", "employee_name")],
            },
        ],
        schema: include_str!("../schemas/it_asset_assigned.v1.json"),
    },
    EventSpec {
        event_type: "it_asset_disposed",
        name: "IT Asset Disposed",
        category: "IT-01 Asset Management",
        source_table: "it_assets",
        condition: "update where status becomes 'disposed'",
        entity_key: "asset_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_asset_disposed.v1.json"),
    },
    EventSpec {
        event_type: "it_ticket_created",
        name: "IT Ticket Created",
        category: "IT-02 Support & Ticketing",
        source_table: "it_tickets",
        condition: "insert",
        entity_key: "ticket_id",
        enrichments: &[Enrichment {
            key: "requester_id",
            reference: Reference::Employee,
            fills: &[
                ("requester_name", "employee_name"),
                ("requester_email", "email"),
            ],
        }],
        schema: include_str!("../schemas/it_ticket_created.v1.json"),
    },
    EventSpec {
        event_type: "it_ticket_status_changed",
        name: "IT Ticket Status Changed",
        category: "IT-02 Support & Ticketing",
        source_table: "it_tickets",
        condition: "update where status changes",
        entity_key: "ticket_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_ticket_status_changed.v1.json"),
    },
    EventSpec {
        event_type: "it_license_renewed",
        name: "IT License Renewed",
        category: "IT-04 Software License Management",
        source_table: "it_licenses",
        condition: "update where expiration_date is extended (new > old)",
        entity_key: "license_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_license_renewed.v1.json"),
    },
    EventSpec {
        event_type: "it_asset_maintenance_required",
        name: "IT Asset Maintenance Required",
        category: "IT-01 Asset Management",
        source_table: "it_maintenance_requests",
        condition: "insert",
        entity_key: "asset_id",
        enrichments: &[Enrichment {
            key: "asset_id",
            reference: Reference::Asset,
            fills: &[
                ("asset_tag", "asset_tag"),
                ("asset_name", "asset_name"),
                ("location", "location"),
            ],
        }],
        schema: include_str!("../schemas/it_asset_maintenance_required.v1.json"),
    },
    EventSpec {
        event_type: "it_license_created",
        name: "IT License Created",
        category: "IT-04 Software License Management",
        source_table: "it_licenses",
        condition: "insert",
        entity_key: "license_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_license_created.v1.json"),
    },
    EventSpec {
        event_type: "it_security_incident_created",
        name: "IT Security Incident Created",
        category: "IT-05 Security & Compliance",
        source_table: "it_security_incidents",
        condition: "insert",
        entity_key: "incident_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_security_incident_created.v1.json"),
    },
    EventSpec {
        event_type: "it_critical_vulnerability_detected",
        name: "IT Critical Vulnerability Detected",
        category: "IT-05 Security & Compliance",
        source_table: "it_vulnerabilities",
        condition: "insert as critical, or update where severity becomes 'critical'",
        entity_key: "vulnerability_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_critical_vulnerability_detected.v1.json"),
    },
    EventSpec {
        event_type: "it_purchase_request_submitted",
        name: "IT Purchase Request Submitted",
        category: "IT-06 Procurement",
        source_table: "it_purchase_requests",
        condition: "insert or update where approval_status becomes 'submitted'",
        entity_key: "request_id",
        enrichments: &[
            Enrichment {
                key: "requester_id",
                reference: Reference::Employee,
                fills: &[("requester_name", "employee_name")],
            },
            VENDOR_NAME,
        ],
        schema: include_str!("../schemas/it_purchase_request_submitted.v1.json"),
    },
    EventSpec {
        event_type: "it_purchase_request_approved",
        name: "IT Purchase Request Approved",
        category: "IT-06 Procurement",
        source_table: "it_purchase_requests",
        condition: "insert or update where approval_status becomes 'approved'",
        entity_key: "request_id",
        enrichments: &[VENDOR_NAME],
        schema: include_str!("../schemas/it_purchase_request_approved.v1.json"),
    },
    EventSpec {
        event_type: "it_purchase_request_received",
        name: "IT Purchase Request Received",
        category: "IT-06 Procurement",
        source_table: "it_purchase_requests",
        condition: "update where received_date is first set (items from it_purchase_request_items)",
        entity_key: "request_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_purchase_request_received.v1.json"),
    },
    EventSpec {
        event_type: "it_provisioning_started",
        name: "IT Provisioning Started",
        category: "IT-08 Onboarding & Offboarding",
        source_table: "it_onboarding_instances",
        condition: "update where status becomes 'in_progress'",
        entity_key: "onboarding_instance_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_provisioning_started.v1.json"),
    },
    EventSpec {
        event_type: "it_provisioning_completed",
        name: "IT Provisioning Completed",
        category: "IT-08 Onboarding & Offboarding",
        source_table: "it_onboarding_instances",
        condition: "update where status becomes 'completed'",
        entity_key: "onboarding_instance_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_provisioning_completed.v1.json"),
    },
    EventSpec {
        event_type: "it_account_provisioned",
        name: "IT Account Provisioned",
        category: "IT-08 Onboarding & Offboarding",
        source_table: "it_access_accounts",
        condition: "update where status becomes 'active'",
        entity_key: "account_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_account_provisioned.v1.json"),
    },
    EventSpec {
        event_type: "it_account_deactivated",
        name: "IT Account Deactivated",
        category: "IT-08 Onboarding & Offboarding",
        source_table: "it_access_accounts",
        condition: "update where status becomes 'deactivated'",
        entity_key: "account_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_account_deactivated.v1.json"),
    },
    EventSpec {
        event_type: "it_report_generated",
        name: "IT Report Generated",
        category: "IT-07 Dashboards & Reporting",
        source_table: "it_report_runs",
        condition: "insert or update where status becomes 'completed'",
        entity_key: "run_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_report_generated.v1.json"),
    },
    EventSpec {
        event_type: "it_report_failed",
        name: "IT Report Failed",
        category: "IT-07 Dashboards & Reporting",
        source_table: "it_report_runs",
        condition: "insert or update where status becomes 'failed'",
        entity_key: "run_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_report_failed.v1.json"),
    },
    EventSpec {
        event_type: "it_change_submitted",
        name: "IT Change Submitted",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "insert or update where status becomes 'submitted'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_submitted.v1.json"),
    },
    EventSpec {
        event_type: "it_change_approved",
        name: "IT Change Approved",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "update where status becomes 'approved'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_approved.v1.json"),
    },
    EventSpec {
        event_type: "it_change_rejected",
        name: "IT Change Rejected",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "update where status becomes 'rejected'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_rejected.v1.json"),
    },
    EventSpec {
        event_type: "it_change_scheduled",
        name: "IT Change Scheduled",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "update where status becomes 'scheduled'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_scheduled.v1.json"),
    },
    EventSpec {
        event_type: "it_change_implemented",
        name: "IT Change Implemented",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "update where status becomes 'implemented'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_implemented.v1.json"),
    },
    EventSpec {
        event_type: "it_change_rolled_back",
        name: "IT Change Rolled Back",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "update where status becomes 'rolled_back'",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_change_rolled_back.v1.json"),
    },
    EventSpec {
        event_type: "it_cab_review_required",
        name: "IT CAB Review Required",
        category: "IT-09 Change Management",
        source_table: "it_changes",
        condition: "status becomes 'submitted' with risk_level high or critical, or cab_review_required set",
        entity_key: "change_id",
        enrichments: &[],
        schema: include_str!("../schemas/it_cab_review_required.v1.json"),
    },
];

/// The catalog entry of an event type.
pub fn find(event_type: &str) -> Option<&'static EventSpec> {
    EVENTS.iter().find(|spec| spec.event_type == event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_ref_is_pascal_case_and_versioned() {
        assert_eq!(
            find("it_asset_purchased").unwrap().schema_ref(),
            "payload.ItAssetPurchased.v1"
        );
        assert_eq!(
            find("it_ticket_status_changed").unwrap().schema_ref(),
            "payload.ItTicketStatusChanged.v1"
        );
    }

    #[test]
    fn every_schema_names_its_event_and_ref() {
        for spec in EVENTS {
            let schema: serde_json::Value = serde_json::from_str(spec.schema).unwrap();
            assert_eq!(schema["title"], spec.schema_ref(), "{}", spec.event_type);
            assert_eq!(
                schema["properties"]["event_type"]["const"], spec.event_type,
                "{}",
                spec.event_type
            );
        }
    }

    #[test]
    fn event_types_are_unique() {
        let mut names: Vec<_> = EVENTS.iter().map(|spec| spec.event_type).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EVENTS.len());
    }
}
