//! The benchmarks' safetensors header (included with `#[path]`): the files run to hundreds of
//! megabytes, so each benchmark streams its data after it instead of building the file in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Creates `path` and writes the safetensors header of `tensors` (key, dtype, shape, bytes per
/// element); returns the writer the tensors' data must follow on, in the same order.
pub fn create<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a str, &'a [usize], usize)>,
) -> BufWriter<File> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, dtype, shape, element) in tensors {
        let n = shape.iter().product::<usize>() * element;
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = File::create(path).expect("create weights file");
    let mut out = BufWriter::with_capacity(1 << 20, f);
    out.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&h).unwrap();
    out
}
