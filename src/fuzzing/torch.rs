//! Hand-written `torch.save` checkpoints: the smallest pickles and zips the `.pth` reader takes,
//! for fuzz seeds and tests (memory bombs, damaged views, training checkpoints). PyTorch's own
//! files memoise and use short opcodes; these spell everything out, which the reader must take
//! as well.

use std::io::Write;

/// One tensor: key, storage class (`FloatStorage`, `HalfStorage`, …), storage key, storage
/// element count, offset, size, stride.
pub type Entry<'a> = (&'a str, &'a str, &'a str, u32, u32, &'a [u32], &'a [u32]);

fn string(p: &mut Vec<u8>, v: &str) {
    p.push(b'X');
    p.extend((v.len() as u32).to_le_bytes());
    p.extend(v.as_bytes());
}

fn int(p: &mut Vec<u8>, v: u32) {
    p.push(b'J');
    p.extend(v.to_le_bytes());
}

/// `OrderedDict(key → tensor)` without the protocol header or the final STOP.
fn ordered_dict(p: &mut Vec<u8>, entries: &[Entry]) {
    p.extend(b"ccollections\nOrderedDict\n)R(");
    for &(key, class, storage, numel, offset, size, stride) in entries {
        string(p, key);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        string(p, "storage");
        p.extend(format!("ctorch\n{class}\n").as_bytes());
        string(p, storage);
        string(p, "cpu");
        int(p, numel);
        p.extend(b"tQ");
        int(p, offset);
        for dims in [size, stride] {
            p.push(b'(');
            for &d in dims {
                int(p, d);
            }
            p.push(b't');
        }
        p.push(0x89);
        p.extend(b"ccollections\nOrderedDict\n)RtR");
    }
    p.push(b'u');
}

/// A protocol-2 pickle of a `state_dict`, as `torch.save(model.state_dict())` stores one.
pub fn state_dict_pickle(entries: &[Entry]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    ordered_dict(&mut p, entries);
    p.push(b'.');
    p
}

/// A training checkpoint's pickle (`.ckpt`): `{"global_step": 1, key: state_dict}`; the reader
/// takes the state_dict only under the key `"state_dict"`.
pub fn checkpoint_pickle(key: &str, entries: &[Entry]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    string(&mut p, "global_step");
    int(&mut p, 1);
    string(&mut p, key);
    ordered_dict(&mut p, entries);
    p.extend(b"u.");
    p
}

/// The zip `torch.save` writes: `<dir>/data.pkl` and one `<dir>/data/<key>` per storage.
pub fn archive(dir: &str, pickle: &[u8], storages: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let names: Vec<String> = std::iter::once(format!("{dir}/data.pkl"))
        .chain(storages.iter().map(|(k, _)| format!("{dir}/data/{k}")))
        .collect();
    let data = std::iter::once(pickle).chain(storages.iter().map(|(_, d)| *d));
    let files: Vec<(&str, &[u8])> = names.iter().map(String::as_str).zip(data).collect();
    zip(&files, deflate)
}

/// A zip of `(name, bytes)` files, in memory.
pub fn zip(files: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        // Writing to memory: neither call can fail on a Cursor.
        w.start_file(*name, opts).expect("in-memory zip");
        w.write_all(data).expect("in-memory zip");
    }
    w.finish().expect("in-memory zip").into_inner()
}
