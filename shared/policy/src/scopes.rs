//! Token scopes, in one place: intake checks them, `pvefleet token create` mints them, and the
//! OpenAPI document lists them. A scope is granted to a token; `admin` holds every scope.
//!
//! A token is an operator's (no owner: it sees the whole fleet) or an owner's (it sees and
//! changes only that owner's sites, their containers and their sagas). The operator-only scopes
//! cannot be given to an owner's token.

/// Read sites and their sagas.
pub const SITES_READ: &str = "sites:read";
/// Create and delete sites.
pub const SITES_WRITE: &str = "sites:write";
/// Reveal a site's generated credentials (each reveal is audited).
pub const SITES_CREDENTIALS: &str = "sites:credentials";
/// Read containers' interfaces, operations and VNet bindings.
pub const NETWORK_READ: &str = "network:read";
/// Attach, change and detach interfaces; bind and unbind VNets.
pub const NETWORK_WRITE: &str = "network:write";
/// Read containers' autoscaling policies.
pub const AUTOSCALE_READ: &str = "autoscale:read";
/// Set and remove containers' autoscaling policies.
pub const AUTOSCALE_WRITE: &str = "autoscale:write";
/// Read deliveries of notices and owners' contacts.
pub const NOTIFICATIONS_READ: &str = "notifications:read";
/// Resend deliveries, set owners' contacts, send a test notice (operators).
pub const NOTIFICATIONS_WRITE: &str = "notifications:write";
/// The dead-letter store: list, show, replay, archive, purge. Operators only.
pub const DLQ_ADMIN: &str = "dlq:admin";
/// Every scope. Operators only.
pub const ADMIN: &str = "admin";

/// A scope and what it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Its name, as minted and checked.
    pub name: &'static str,
    /// What it grants, for a person.
    pub grants: &'static str,
    /// Only an operator's token (one with no owner) may hold it.
    pub operator_only: bool,
}

/// Every scope intake checks.
pub const ALL: &[Scope] = &[
    Scope {
        name: SITES_READ,
        grants: "read sites and their sagas",
        operator_only: false,
    },
    Scope {
        name: SITES_WRITE,
        grants: "create and delete sites",
        operator_only: false,
    },
    Scope {
        name: SITES_CREDENTIALS,
        grants: "reveal sites' generated credentials (audited)",
        operator_only: false,
    },
    Scope {
        name: NETWORK_READ,
        grants: "read containers' interfaces, operations and VNet bindings",
        operator_only: false,
    },
    Scope {
        name: NETWORK_WRITE,
        grants: "attach, change and detach interfaces; bind and unbind VNets",
        operator_only: false,
    },
    Scope {
        name: AUTOSCALE_READ,
        grants: "read containers' autoscaling policies",
        operator_only: false,
    },
    Scope {
        name: AUTOSCALE_WRITE,
        grants: "set and remove containers' autoscaling policies",
        operator_only: false,
    },
    Scope {
        name: NOTIFICATIONS_READ,
        grants: "read deliveries of notices and owners' contacts",
        operator_only: false,
    },
    Scope {
        name: NOTIFICATIONS_WRITE,
        grants: "resend deliveries and set owners' contacts (a test notice: operators)",
        operator_only: false,
    },
    Scope {
        name: DLQ_ADMIN,
        grants: "the dead-letter store: list, show, replay, archive, purge",
        operator_only: true,
    },
    Scope {
        name: ADMIN,
        grants: "every scope",
        operator_only: true,
    },
];

/// Every scope's name.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|s| s.name).collect()
}

/// The scope named `name`.
pub fn find(name: &str) -> Option<&'static Scope> {
    ALL.iter().find(|s| s.name == name)
}

/// Whether `granted` holds `needed` (directly, or through `admin`).
pub fn holds(granted: &[String], needed: &str) -> bool {
    granted.iter().any(|s| s == needed || s == ADMIN)
}

/// Checks scopes to be given to a token of `owner` (none: an operator's): each is known, and
/// an owner's token holds no operator-only scope.
pub fn grantable(scopes: &[String], owner: Option<&str>) -> Result<(), String> {
    if scopes.is_empty() {
        return Err("a token needs at least one scope".into());
    }
    for s in scopes {
        let Some(scope) = find(s) else {
            return Err(format!("'{s}' is not a scope (one of {})", names().join(", ")));
        };
        if scope.operator_only
            && let Some(owner) = owner
        {
            return Err(format!(
                "'{s}' is for operators' tokens only; a token of owner '{owner}' cannot hold it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_every_scope_and_others_only_their_own() {
        let admin = vec![ADMIN.to_string()];
        assert!(ALL.iter().all(|s| holds(&admin, s.name)));
        let read = vec![SITES_READ.to_string()];
        assert!(holds(&read, SITES_READ));
        assert!(!holds(&read, SITES_WRITE));
        assert!(!holds(&read, DLQ_ADMIN));
    }

    #[test]
    fn an_owners_token_cannot_hold_an_operator_scope() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(grantable(&s(&[NETWORK_WRITE, AUTOSCALE_WRITE]), Some("alice")).is_ok());
        assert!(grantable(&s(&[DLQ_ADMIN]), None).is_ok());
        let e = grantable(&s(&[SITES_READ, DLQ_ADMIN]), Some("alice")).unwrap_err();
        assert!(e.contains("dlq:admin") && e.contains("alice"), "{e}");
        assert!(
            grantable(&s(&["sites:delete"]), None)
                .unwrap_err()
                .contains("not a scope")
        );
        assert!(grantable(&[], None).is_err());
    }
}
