//! Which methods need which scopes.
//!
//! Classification is by gRPC path and fails closed: anything not listed as
//! public needs a valid token, and NotesService methods also need their
//! group's scopes.

use std::collections::BTreeSet;

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
#[derive(Debug, Clone)]
pub struct ScopePolicy {
    /// Required for [`Access::Read`].
    pub read: BTreeSet<String>,
    /// Required for [`Access::Write`].
    pub write: BTreeSet<String>,
}

impl ScopePolicy {
    /// The first required scope missing from `granted`, if any.
    pub fn missing<'a>(&'a self, access: Access, granted: &BTreeSet<String>) -> Option<&'a str> {
        let required = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
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
}
