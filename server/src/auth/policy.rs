//! The policy table: which gRPC paths need which scopes.
//!
//! Classification is by gRPC path and fails closed: anything not listed as
//! public needs a valid token, and NotesService methods also need the scopes
//! of their access level, as [`notes_api::methods`] lists them (the one
//! table of per-method rules, checked against the proto by its tests). User tokens and machine (client-credentials) tokens have
//! separate scope lists: Cognito's USER_PASSWORD_AUTH user tokens carry only
//! `aws.cognito.signin.user.admin`, while client-credentials tokens carry the
//! resource server's custom scopes.

use std::collections::BTreeSet;

use notes_api::methods;

use super::CallerKind;

/// What a gRPC path requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks and reflection: mutual TLS only, no token. Load
    /// balancers probe health without tokens, and reflection only describes
    /// the public schema.
    Public,
    /// Methods listed as [`methods::Access::Read`]: a token with the read scopes.
    Read,
    /// Methods listed as [`methods::Access::Write`]: a token with the write scopes.
    Write,
    /// Anything else (unknown paths): a valid token, no scope.
    Authenticated,
}

const PUBLIC_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

impl Access {
    /// Classifies a request path such as `/notes.v1.NotesService/GetNote`.
    pub fn of_path(path: &str) -> Self {
        match methods::by_path(path) {
            Some(method) => match method.access {
                methods::Access::Read => Access::Read,
                methods::Access::Write => Access::Write,
            },
            None if PUBLIC_SERVICES.iter().any(|p| path.starts_with(p)) => Access::Public,
            None => Access::Authenticated,
        }
    }
}

/// The scopes each access level requires (all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessScopes {
    /// Required for [`Access::Read`] (both lists must be written out in a
    /// file: an empty list is a decision, never an omission).
    pub read: BTreeSet<String>,
    /// Required for [`Access::Write`].
    pub write: BTreeSet<String>,
}

/// Scopes required of user tokens and of machine tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopePolicy {
    /// For tokens of signed-in users.
    pub user: AccessScopes,
    /// For client-credentials tokens.
    pub machine: AccessScopes,
}

impl ScopePolicy {
    /// The same scopes for users and machines.
    pub fn same_for_all(read: BTreeSet<String>, write: BTreeSet<String>) -> Self {
        let scopes = AccessScopes { read, write };
        Self {
            user: scopes.clone(),
            machine: scopes,
        }
    }

    /// The first required scope missing from `granted`, if any.
    pub fn missing<'a>(
        &'a self,
        access: Access,
        kind: CallerKind,
        granted: &BTreeSet<String>,
    ) -> Option<&'a str> {
        let scopes = match kind {
            CallerKind::User => &self.user,
            CallerKind::Machine => &self.machine,
        };
        let required = match access {
            Access::Read => &scopes.read,
            Access::Write => &scopes.write,
            Access::Public | Access::Authenticated => return None,
        };
        required
            .iter()
            .find(|scope| !granted.contains(*scope))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_methods_have_their_access_level() {
        assert_eq!(
            Access::of_path("/notes.v1.NotesService/GetNote"),
            Access::Read
        );
        assert_eq!(
            Access::of_path("/notes.v1.NotesService/ListNotes"),
            Access::Read
        );
        assert_eq!(
            Access::of_path("/notes.v1.NotesService/CreateNote"),
            Access::Write
        );
        assert_eq!(
            Access::of_path("/notes.v1.NotesService/DeleteNote"),
            Access::Write
        );
        assert_eq!(
            Access::of_path("/notes.v1.NotesService/Nope"),
            Access::Authenticated
        );
    }

    #[test]
    fn every_listed_method_needs_scopes() {
        for method in methods::ALL {
            assert!(
                matches!(Access::of_path(method.path), Access::Read | Access::Write),
                "{}",
                method.path
            );
        }
    }

    #[test]
    fn only_health_and_reflection_are_public() {
        assert_eq!(
            Access::of_path("/grpc.health.v1.Health/Check"),
            Access::Public
        );
        assert_eq!(
            Access::of_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Public
        );
        assert_eq!(
            Access::of_path("/grpc.health.v1.HealthX/Check"),
            Access::Authenticated
        );
        assert_eq!(
            Access::of_path("/other.Service/Call"),
            Access::Authenticated
        );
        assert_eq!(Access::of_path(""), Access::Authenticated);
    }

    #[test]
    fn users_and_machines_are_held_to_their_own_scopes() {
        let policy = ScopePolicy {
            user: AccessScopes {
                read: ["aws.cognito.signin.user.admin".to_owned()].into(),
                write: ["aws.cognito.signin.user.admin".to_owned()].into(),
            },
            machine: AccessScopes {
                read: ["notes/read".to_owned()].into(),
                write: ["notes/write".to_owned()].into(),
            },
        };
        let user: BTreeSet<String> = ["aws.cognito.signin.user.admin".to_owned()].into();
        let machine: BTreeSet<String> = ["notes/read".to_owned()].into();

        assert_eq!(policy.missing(Access::Write, CallerKind::User, &user), None);
        assert_eq!(
            policy.missing(Access::Read, CallerKind::Machine, &machine),
            None
        );
        assert_eq!(
            policy.missing(Access::Write, CallerKind::Machine, &machine),
            Some("notes/write")
        );
        assert_eq!(
            policy.missing(Access::Read, CallerKind::Machine, &user),
            Some("notes/read")
        );
    }

    /// "All required scopes", not any one of them: a level that requires
    /// two refuses a token holding only one, for users and for machines.
    #[test]
    fn a_level_requiring_two_scopes_refuses_a_token_with_one() {
        let two: BTreeSet<String> = ["notes/read".to_owned(), "tenant/a".to_owned()].into();
        let policy = ScopePolicy::same_for_all(two.clone(), two.clone());
        for kind in [CallerKind::User, CallerKind::Machine] {
            for access in [Access::Read, Access::Write] {
                for one in &two {
                    let granted: BTreeSet<String> = [one.clone()].into();
                    assert!(
                        policy.missing(access, kind, &granted).is_some(),
                        "{kind:?} {access:?} with only {one}"
                    );
                }
                assert_eq!(policy.missing(access, kind, &two), None);
            }
        }
    }

    proptest::proptest! {
        /// A token is admitted iff its scopes are a superset of the level's
        /// required set, for any sets, users and machines alike.
        #[test]
        fn admitted_iff_the_granted_scopes_cover_the_required(
            required in proptest::collection::btree_set("[a-c]{1,2}", 0..4),
            granted in proptest::collection::btree_set("[a-c]{1,2}", 0..5),
            machine in proptest::prelude::any::<bool>(),
            write in proptest::prelude::any::<bool>(),
        ) {
            let policy = ScopePolicy::same_for_all(required.clone(), required.clone());
            let kind = if machine { CallerKind::Machine } else { CallerKind::User };
            let access = if write { Access::Write } else { Access::Read };
            let missing = policy.missing(access, kind, &granted);
            proptest::prop_assert_eq!(missing.is_none(), required.is_subset(&granted));
            if let Some(scope) = missing {
                proptest::prop_assert!(required.contains(scope) && !granted.contains(scope));
            }
        }
    }
}
