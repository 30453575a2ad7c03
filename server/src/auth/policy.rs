//! Which methods need which scopes.
//!
//! Classification is by gRPC path and fails closed: anything not listed as
//! public needs a valid token, and NotesService methods also need their
//! group's scopes. User tokens and machine (client-credentials) tokens have
//! separate scope lists: Cognito's USER_PASSWORD_AUTH user tokens carry only
//! `aws.cognito.signin.user.admin`, while client-credentials tokens carry the
//! resource server's custom scopes.

use std::collections::BTreeSet;

use super::CallerKind;

/// What a gRPC path requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks and reflection: mutual TLS only, no token. Load
    /// balancers probe health without tokens, and reflection only describes
    /// the public schema.
    Public,
    /// GetNote, ListNotes: a token with the read scopes.
    Read,
    /// CreateNote, UpdateNote, DeleteNote: a token with the write scopes.
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
        match path.strip_prefix("/notes.v1.NotesService/") {
            Some("GetNote" | "ListNotes") => Access::Read,
            Some("CreateNote" | "UpdateNote" | "DeleteNote") => Access::Write,
            Some(_) => Access::Authenticated,
            None if PUBLIC_SERVICES.iter().any(|p| path.starts_with(p)) => Access::Public,
            None => Access::Authenticated,
        }
    }
}

/// The scopes each method group requires (all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupScopes {
    /// Required for [`Access::Read`].
    #[serde(default)]
    pub read: BTreeSet<String>,
    /// Required for [`Access::Write`].
    #[serde(default)]
    pub write: BTreeSet<String>,
}

/// Scopes required of user tokens and of machine tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopePolicy {
    /// For tokens of signed-in users.
    pub user: GroupScopes,
    /// For client-credentials tokens.
    pub machine: GroupScopes,
}

impl ScopePolicy {
    /// The same scopes for users and machines.
    pub fn same_for_all(read: BTreeSet<String>, write: BTreeSet<String>) -> Self {
        let scopes = GroupScopes { read, write };
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
            CallerKind::Service => &self.machine,
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
    fn notes_methods_fall_into_their_groups() {
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
            user: GroupScopes {
                read: ["aws.cognito.signin.user.admin".to_owned()].into(),
                write: ["aws.cognito.signin.user.admin".to_owned()].into(),
            },
            machine: GroupScopes {
                read: ["notes/read".to_owned()].into(),
                write: ["notes/write".to_owned()].into(),
            },
        };
        let user: BTreeSet<String> = ["aws.cognito.signin.user.admin".to_owned()].into();
        let machine: BTreeSet<String> = ["notes/read".to_owned()].into();

        assert_eq!(policy.missing(Access::Write, CallerKind::User, &user), None);
        assert_eq!(
            policy.missing(Access::Read, CallerKind::Service, &machine),
            None
        );
        assert_eq!(
            policy.missing(Access::Write, CallerKind::Service, &machine),
            Some("notes/write")
        );
        assert_eq!(
            policy.missing(Access::Read, CallerKind::Service, &user),
            Some("notes/read")
        );
    }
}
