//! Image references as tenants write them (`base_image`, `FROM`): parsed, printed and parsed
//! again to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nullspace_oci::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        match Reference::parse(&printed) {
            Ok(again) => assert_eq!(again.to_string(), printed, "from {text:?}"),
            Err(error) => panic!("{text:?} printed as {printed:?}, which does not parse: {error}"),
        }
    }
});
