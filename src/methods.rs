//! The one table of per-method rules of `notes.v1.NotesService`.
//!
//! Every RPC of the service is listed here with what it needs of its caller
//! ([`Access`]) and whether a client may repeat it after UNAVAILABLE
//! ([`Retry`]). The server's scope policy and the client's retry rule both
//! read this table; a test checks it against the compiled descriptor set, so
//! an RPC added to the proto without an entry here fails the tests.

/// What a method requires of its caller, beyond mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A valid token with the read scopes.
    Read,
    /// A valid token with the write scopes.
    Write,
}

/// Whether a client may send a method again after an UNAVAILABLE answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating it changes nothing (reads).
    Safe,
    /// A write: safe to repeat only when the request carries a `request_id`,
    /// which makes a repeat answer the first outcome. Without one, a repeat
    /// after a lost answer could apply twice or report a conflict the caller
    /// did not cause.
    WithRequestId,
}

/// The rules of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The RPC name, e.g. `GetNote`.
    pub name: &'static str,
    /// The gRPC path, e.g. `/notes.v1.NotesService/GetNote`.
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// Whether a client may retry it.
    pub retry: Retry,
}

macro_rules! method {
    ($name:literal, $access:ident, $retry:ident) => {
        Method {
            name: $name,
            path: concat!("/notes.v1.NotesService/", $name),
            access: Access::$access,
            retry: Retry::$retry,
        }
    };
}

/// `CreateNote`: write; retried with a `request_id`.
pub const CREATE_NOTE: Method = method!("CreateNote", Write, WithRequestId);
/// `GetNote`: read.
pub const GET_NOTE: Method = method!("GetNote", Read, Safe);
/// `ListNotes`: read.
pub const LIST_NOTES: Method = method!("ListNotes", Read, Safe);
/// `UpdateNote`: write; retried with a `request_id`.
pub const UPDATE_NOTE: Method = method!("UpdateNote", Write, WithRequestId);
/// `DeleteNote`: write; retried with a `request_id`.
pub const DELETE_NOTE: Method = method!("DeleteNote", Write, WithRequestId);

/// Every RPC of `notes.v1.NotesService`.
pub const ALL: [Method; 5] = [CREATE_NOTE, GET_NOTE, LIST_NOTES, UPDATE_NOTE, DELETE_NOTE];

/// The rules of the RPC at gRPC `path`, if it is one of the service's.
pub fn by_path(path: &str) -> Option<&'static Method> {
    ALL.iter().find(|method| method.path == path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    fn described_methods() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        set.file
            .iter()
            .filter(|file| file.package() == "notes.v1")
            .flat_map(|file| &file.service)
            .flat_map(|service| {
                service
                    .method
                    .iter()
                    .map(move |m| format!("/{}.{}/{}", "notes.v1", service.name(), m.name()))
            })
            .collect()
    }

    #[test]
    fn every_rpc_in_the_proto_has_exactly_one_rule() {
        let listed: BTreeSet<String> = ALL.iter().map(|m| m.path.to_owned()).collect();
        assert_eq!(listed.len(), ALL.len(), "a method is listed twice");
        assert_eq!(
            described_methods(),
            listed,
            "src/methods.rs must list every notes.v1 RPC (and nothing else)"
        );
    }

    #[test]
    fn paths_name_the_service() {
        for method in ALL {
            assert_eq!(
                method.path,
                format!("/{}/{}", crate::SERVICE_NAME, method.name)
            );
        }
    }

    #[test]
    fn writes_are_retried_only_with_an_idempotency_key() {
        for method in ALL {
            let expected = match method.access {
                Access::Read => Retry::Safe,
                Access::Write => Retry::WithRequestId,
            };
            assert_eq!(method.retry, expected, "{}", method.name);
        }
        assert_eq!(by_path("/notes.v1.NotesService/Nope"), None);
    }
}
