//! What the certs tool and the server read from files it did not write:
//! `revoked.txt`, a certificate's PEM (for its serial) and a CRL file. Any
//! bytes are parsed or refused, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = notes_server::certs::parse_revoked(text);
        let _ = notes_server::certs::authority::serial_of(text);
    }
    let _ = notes_server::tls::parse_crls(data, "fuzz");
});
