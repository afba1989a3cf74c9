#![no_main]

use libfuzzer_sys::fuzz_target;
use mlc::fuzzing::Target;

fuzz_target!(|data: &[u8]| {
    let _ = Target::Manifest.run(data);
});
