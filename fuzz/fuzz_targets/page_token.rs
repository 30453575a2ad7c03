//! Page tokens: opening arbitrary text never panics, a sealed token opens
//! for its owner only, and nothing but a sealed token ever opens.

#![no_main]

use libfuzzer_sys::fuzz_target;
use notes_server::api::PageTokens;

fuzz_target!(|input: (&str, &str, [u8; 16], bool)| {
    let (owner, token, id, seal_first) = input;
    let tokens = PageTokens::new(&[42; 32]).unwrap();
    if seal_first {
        let id = uuid::Uuid::from_bytes(id);
        let sealed = tokens.seal(owner, id);
        assert_eq!(tokens.open(owner, &sealed).ok(), Some(id));
        let other = format!("{owner}x");
        assert!(tokens.open(&other, &sealed).is_err(), "opened for another owner");
    } else if let Ok(id) = tokens.open(owner, token) {
        // Only what seal made opens: re-sealing gives the same token.
        assert_eq!(tokens.seal(owner, id), token);
    }
});
