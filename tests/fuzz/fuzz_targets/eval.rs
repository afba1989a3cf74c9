#![no_main]

use libfuzzer_sys::fuzz_target;
use mlc::fuzzing::InputFormat;

fuzz_target!(|data: &[u8]| {
    let _ = InputFormat::Eval.run(data);
});
