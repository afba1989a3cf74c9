//! PyTorch `torch.save` zip checkpoints (PyTorch ≥ 1.6), read without Python.
//!
//! The archive holds `<archive>/data.pkl`, a protocol-2 pickle of the `state_dict`, and one
//! `<archive>/data/<key>` entry of raw little-endian elements per storage. Tensors in the pickle
//! are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` calls whose storage
//! is a persistent id `('storage', torch.HalfStorage, key, location, numel)`.
//!
//! Opening reads the zip directory and the pickle; a tensor's storage entry is read when the
//! tensor is (the zip crate checks its CRC as it reads it to the end), and the tensor's view is
//! gathered out of it in the storage's dtype.
//!
//! The pickle is interpreted by a deliberately tiny VM: only the opcodes `torch.save` emits for a
//! `state_dict`, and only the globals needed to rebuild it, which are recognised by name and
//! never imported or called. Anything else is an error naming the opcode or global. Containers
//! live in an arena and the stack holds indices into it, so memo sharing and in-place updates
//! (`SETITEMS` after `BINPUT`) behave as in Python, and no hostile nesting can recurse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::{
    alloc_error, corrupt, Bytes, Decoded, FloatKind, StoredDtype, TensorInfo, WeightError,
};
use crate::limits::Budget;
use crate::tensor::Tensor;

/// `data.pkl` of a decoder is ~11 KB; anything near this is not a state_dict we can use.
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Hard caps on the VM's stack (values plus marks) and memo, whatever the pickle's length.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;

/// An open checkpoint: its pickle interpreted, its storages still in the archive.
pub(crate) struct Archive {
    zip: zip::ZipArchive<Bytes>,
    /// `<archive>/`, the folder `data.pkl` is in.
    prefix: String,
    file_len: u64,
    views: HashMap<String, TensorRef>,
    /// Storages already charged to the budget: reading one again for another view of it
    /// allocates nothing that outlives the read.
    charged: HashSet<Rc<str>>,
}

impl Archive {
    /// Reads the zip directory and interprets the pickle. Everything this allocates (the
    /// pickle, the VM's objects) and everything [`Archive::read`] does later (the storages, the
    /// decoded tensors) is charged to `budget`, so a small file cannot expand into gigabytes:
    /// views that repeat one element (stride 0), many keys over one large storage, or a pickle
    /// that builds millions of objects all stop at the budget with an error naming the tensor or
    /// the pickle.
    pub(crate) fn open(
        path: &Path,
        src: Bytes,
        file_len: u64,
        budget: &mut Budget,
    ) -> Result<(BTreeMap<String, TensorInfo>, Archive), WeightError> {
        let mut zip = zip::ZipArchive::new(src)
            .map_err(|e| corrupt(path, format!("not a valid zip archive: {}", zip_reason(e))))?;

        let pkl_names: Vec<String> = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(str::to_string)
            .collect();
        let pkl_name = match pkl_names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(corrupt(
                    path,
                    "zip archive has no data.pkl: not a PyTorch checkpoint",
                ))
            }
            _ => {
                return Err(corrupt(
                    path,
                    format!("zip archive has several pickles: {pkl_names:?}"),
                ))
            }
        };
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

        // Archives from old writers have no byteorder record; those were always little-endian.
        let byteorder_name = format!("{prefix}byteorder");
        if zip.file_names().any(|n| n == byteorder_name) {
            let order = read_entry(&mut zip, &byteorder_name, 16).map_err(|r| corrupt(path, r))?;
            if order != b"little" {
                let order = String::from_utf8_lossy(&order);
                return Err(corrupt(
                    path,
                    format!("byteorder is {order:?}; only little-endian"),
                ));
            }
        }

        let pickle_limit = MAX_PICKLE_BYTES.min(budget.remaining());
        let pickle = read_entry(&mut zip, &pkl_name, pickle_limit).map_err(|r| corrupt(path, r))?;
        budget
            .charge(&pkl_name, pickle.len() as u64)
            .map_err(|r| corrupt(path, r))?;
        let mut vm = Vm::new(&pickle, budget);
        let root = vm
            .run()
            .map_err(|r| corrupt(path, format!("{pkl_name}: {r}")))?;
        let entries = vm
            .state_dict(root)
            .map_err(|r| corrupt(path, format!("{pkl_name}: {r}")))?;

        let mut tensors = BTreeMap::new();
        let mut views = HashMap::new();
        for (key, t) in entries {
            let dtype = match t.storage.kind {
                StorageKind::Float(FloatKind::F32) => StoredDtype::F32,
                StorageKind::Float(FloatKind::F16) => StoredDtype::F16,
                StorageKind::Float(FloatKind::BF16) => StoredDtype::BF16,
                StorageKind::Int(name) => StoredDtype::Int(format!("torch.{name}")),
                StorageKind::Other(name) => StoredDtype::Unsupported(format!("torch.{name}")),
            };
            // A shape that does not fit in memory is refused when the tensor is read.
            let shape = t.size.iter().map(|&d| d as usize).collect();
            tensors.insert(key.clone(), TensorInfo { dtype, shape });
            views.insert(key, t);
        }
        let archive = Archive {
            zip,
            prefix,
            file_len,
            views,
            charged: HashSet::new(),
        };
        Ok((tensors, archive))
    }

    /// The float tensor `key`: its storage read from the archive, its view gathered.
    pub(crate) fn read(
        &mut self,
        path: &Path,
        key: &str,
        info: &TensorInfo,
        budget: &mut Budget,
    ) -> Result<Tensor, WeightError> {
        let (Some(kind), Some(t)) = (FloatKind::of(&info.dtype), self.views.get(key)) else {
            return Err(WeightError::MissingKey {
                path: path.to_path_buf(),
                key: key.into(),
            });
        };
        let name = format!("{}data/{}", self.prefix, t.storage.key);
        let storage_bytes = t
            .storage
            .numel
            .checked_mul(kind.size() as u64)
            // Deflate cannot expand data more than ~1032x; torch itself stores entries raw.
            .filter(|&n| n <= self.file_len.saturating_mul(1032))
            .ok_or_else(|| {
                let n = t.storage.numel;
                corrupt(
                    path,
                    format!("tensor \"{key}\": {name} of {n} elements cannot fit"),
                )
            })?;
        if !self.charged.contains(&t.storage.key) {
            let what = format!("tensor \"{key}\": reading {name}");
            budget
                .charge(&what, storage_bytes)
                .map_err(|r| corrupt(path, r))?;
            self.charged.insert(t.storage.key.clone());
        }
        let data = read_entry(&mut self.zip, &name, storage_bytes).map_err(|r| corrupt(path, r))?;
        // Checked per tensor: tensors sharing a storage could disagree about its size or type.
        if data.len() as u64 != storage_bytes {
            let n = data.len();
            let reason =
                format!("tensor \"{key}\": {name} holds {n} bytes, expected {storage_bytes}");
            return Err(corrupt(path, reason));
        }
        // Charged before anything is allocated: a view may repeat one stored element any
        // number of times (stride 0), and any number of keys may share one storage.
        let decoded = t
            .size
            .iter()
            .try_fold(kind.decoded_size() as u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX);
        let what = format!("tensor \"{key}\" of size {:?}", t.size);
        budget
            .charge(&what, decoded)
            .map_err(|r| corrupt(path, r))?;
        materialise(path, key, t, &data, kind, decoded)
    }
}

fn zip_reason(e: zip::result::ZipError) -> String {
    match e {
        // The zip crate's own text for these is a bare "i/o error".
        zip::result::ZipError::Io(io) => format!("{io} (truncated?)"),
        e => e.to_string(),
    }
}

/// Reads a whole zip entry, refusing more than `limit` bytes (declared or actual). The zip crate
/// checks the CRC when the entry is read to its end, which catches flipped data bytes.
fn read_entry(zip: &mut zip::ZipArchive<Bytes>, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("{name}: {}", zip_reason(e)))?;
    if f.size() > limit {
        return Err(format!(
            "{name}: entry of {} bytes, expected at most {limit}",
            f.size()
        ));
    }
    let mut buf = Vec::new();
    (&mut f)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("{name}: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!("{name}: entry longer than {limit} bytes"));
    }
    Ok(buf)
}

/// Gathers the tensor's elements (row-major) from its storage, honouring offset and strides,
/// in the storage's dtype (bf16 widened). `decoded` is the result's size in bytes, already
/// charged to the budget.
fn materialise(
    path: &Path,
    key: &str,
    t: &TensorRef,
    data: &[u8],
    kind: FloatKind,
    decoded: u64,
) -> Result<Tensor, WeightError> {
    let bad = |r: String| corrupt(path, format!("tensor \"{key}\": {r}"));
    let storage_numel = t.storage.numel;
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("size overflows".into()))?;
    let numel_usize = usize::try_from(numel).map_err(|_| bad("size overflows".into()))?;
    let shape: Vec<usize> = t.size.iter().map(|&d| d as usize).collect();
    let mut out =
        Decoded::with_capacity(kind, numel_usize).ok_or_else(|| alloc_error(path, key, decoded))?;
    if numel == 0 {
        return Ok(out.into_tensor(shape));
    }
    // Largest element index the view touches; strides and sizes are non-negative.
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| bad("strides overflow".into()))?;
    }
    if last >= storage_numel {
        return Err(bad(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {}",
            t.offset, t.size, t.stride, storage_numel
        )));
    }
    let elem = kind.size();
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
            // PyTorch leaves the stride of a size-1 dimension arbitrary.
            if d != 1 && s != expect {
                ok = false;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        let start = t.offset as usize * elem;
        let end = start + numel_usize * elem;
        out.extend(&data[start..end]);
        return Ok(out.into_tensor(shape));
    }
    let mut idx = vec![0u64; t.size.len()];
    for _ in 0..numel {
        // At most `last`, checked above not to overflow.
        let pos = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let at = pos as usize * elem;
        out.extend(&data[at..at + elem]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out.into_tensor(shape))
}

#[derive(Debug, Clone)]
enum Value {
    None,
    /// Payloads of bools and floats are never needed for a state_dict.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    /// Index into the VM's object arena.
    Obj(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    Float(FloatKind),
    /// Integers and bools: listed, not read.
    Int(&'static str),
    /// A float storage class we recognise but cannot read (named in the error).
    Other(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageKind),
}

impl Global {
    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::Storage(_) => "a torch storage type",
        }
    }

    fn lookup(module: &str, name: &str) -> Option<Global> {
        let storage = |k| Some(Global::Storage(k));
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", "FloatStorage") => storage(StorageKind::Float(FloatKind::F32)),
            ("torch", "HalfStorage") => storage(StorageKind::Float(FloatKind::F16)),
            ("torch", "BFloat16Storage") => storage(StorageKind::Float(FloatKind::BF16)),
            ("torch", other) => {
                const INTS: [&str; 6] = [
                    "BoolStorage",
                    "LongStorage",
                    "IntStorage",
                    "ShortStorage",
                    "CharStorage",
                    "ByteStorage",
                ];
                const OTHERS: [&str; 3] = [
                    "DoubleStorage",
                    "ComplexFloatStorage",
                    "ComplexDoubleStorage",
                ];
                if let Some(&i) = INTS.iter().find(|&&i| i == other) {
                    return storage(StorageKind::Int(i));
                }
                OTHERS
                    .iter()
                    .find(|&&o| o == other)
                    .and_then(|&o| storage(StorageKind::Other(o)))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct StorageRef {
    kind: StorageKind,
    key: Rc<str>,
    numel: u64,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered; a repeated key overrides, as in Python, when read back.
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

struct Vm<'a, 'b> {
    code: &'a [u8],
    /// Charged for every value, object, memo entry and string the VM creates.
    budget: &'b mut Budget,
    /// Limits on stack (values plus marks) and memo entries: a real `state_dict` pickle has a
    /// few thousand values on the stack at most and memoizes at most one object per 2 bytes.
    /// (The opcode count needs no limit: every opcode consumes at least one byte and the
    /// pickle has no jumps, so it is at most the pickle's length.)
    max_stack: usize,
    max_memo: usize,
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK, as CPython's metastack.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Obj>,
}

type R<T> = Result<T, String>;

impl<'a, 'b> Vm<'a, 'b> {
    fn new(code: &'a [u8], budget: &'b mut Budget) -> Self {
        Vm {
            code,
            budget,
            max_stack: (code.len() / 4).clamp(1024, MAX_STACK),
            max_memo: (code.len() / 2).clamp(1024, MAX_MEMO),
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.code.len());
        let end =
            end.ok_or_else(|| format!("pickle ends inside an opcode at byte {}", self.pos))?;
        let s = &self.code[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.code[self.pos..];
        let Some(n) = rest.iter().take(256).position(|&b| b == b'\n') else {
            return Err(if rest.len() < 256 {
                format!(
                    "pickle ends inside a GLOBAL name at byte {}",
                    self.code.len()
                )
            } else {
                format!("GLOBAL name at byte {} is too long", self.pos)
            });
        };
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "string is not valid UTF-8")?;
        self.charge("a string", n)?;
        Ok(Value::Str(s.into()))
    }

    fn charge(&mut self, what: &str, bytes: usize) -> R<()> {
        let at = self.pos;
        self.budget
            .charge(&format!("{what} at byte {at}"), bytes as u64)
    }

    fn check_depth(&self) -> R<()> {
        if self.stack.len() + self.marks.len() >= self.max_stack {
            return Err(format!(
                "pickle stack deeper than {} entries at byte {}",
                self.max_stack, self.pos
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> R<()> {
        self.check_depth()?;
        self.charge("a value", std::mem::size_of::<Value>())?;
        self.stack.push(v);
        Ok(())
    }

    fn new_obj(&mut self, o: Obj) -> R<Value> {
        self.charge("an object", std::mem::size_of::<Obj>())?;
        self.arena.push(o);
        Ok(Value::Obj(self.arena.len() - 1))
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow below MARK".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        if m > self.stack.len() {
            return Err("MARK above stack top".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn top_obj(&mut self) -> R<&mut Obj> {
        match self.stack.last() {
            Some(Value::Obj(i)) => Ok(&mut self.arena[*i]),
            _ => Err("expected a container on the stack".into()),
        }
    }

    fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.arena.get(*i),
            _ => None,
        }
    }

    fn memo_get(&self, i: u32) -> R<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo entry {i} read before written"))
    }

    fn memo_put(&mut self, i: u32) -> R<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or("BINPUT on an empty stack")?;
        if !self.memo.contains_key(&i) {
            if self.memo.len() >= self.max_memo {
                return Err(format!(
                    "pickle memo larger than {} entries at byte {}",
                    self.max_memo, self.pos
                ));
            }
            // The entry plus the hash table's control byte and slack.
            self.charge("a memo entry", std::mem::size_of::<(u32, Value)>() + 8)?;
        }
        self.memo.insert(i, v);
        Ok(())
    }

    /// Runs to `STOP` and returns the unpickled root value.
    fn run(&mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|_| format!("pickle ends at byte {at} without STOP"))?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto} not supported"));
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = Global::lookup(module, name)
                        .ok_or_else(|| format!("unsupported pickle global {module}.{name}"))?;
                    let v = self.new_obj(Obj::Global(g))?;
                    self.push(v)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.push(v)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v)?;
                }
                b'(' => {
                    self.check_depth()?;
                    self.charge("a MARK", std::mem::size_of::<usize>())?;
                    self.marks.push(self.stack.len());
                }
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(format!("LONG1 of {n} bytes is out of range"));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    // Sign-extend the n-byte two's complement value.
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'N' => self.push(Value::None)?,
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.persistent_load(&pid)?;
                    let v = self.new_obj(Obj::Storage(s))?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(&func, &args)?;
                    self.push(v)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_obj()? {
                        Obj::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let mut it = items.into_iter();
                    let pairs: Vec<_> =
                        std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect();
                    match self.top_obj()? {
                        Obj::Dict(d) => d.extend(pairs),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top_obj()? {
                        Obj::List(l) => l.push(v),
                        _ => return Err("APPEND on a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top_obj()? {
                        Obj::List(l) => l.extend(items),
                        _ => return Err("APPENDS on a non-list".into()),
                    }
                }
                b'b' => {
                    self.pop()?;
                    // torch sets `_metadata` (module versions) on the state_dict this way;
                    // it does not affect tensor values, so the state is dropped.
                    match self.top_obj()? {
                        Obj::Dict(_) => {}
                        _ => return Err("BUILD on an object other than a dict".into()),
                    }
                }
                b'.' => {
                    return self.pop().map_err(|_| "STOP on an empty stack".into());
                }
                _ => {
                    return Err(format!(
                        "unsupported pickle opcode {} at byte {at}",
                        op_name(op)
                    ))
                }
            }
        }
    }

    /// `('storage', torch.<Type>Storage, key, location, numel)`, as `torch.save` writes it.
    fn persistent_load(&self, pid: &Value) -> R<StorageRef> {
        let Some(Obj::Tuple(t)) = self.obj(pid) else {
            return Err("persistent id is not a tuple".into());
        };
        match t.as_slice() {
            [Value::Str(tag), ty, Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if &**tag == "storage" && *numel >= 0 =>
            {
                let Some(Obj::Global(Global::Storage(kind))) = self.obj(ty) else {
                    return Err("persistent id names no storage type".into());
                };
                Ok(StorageRef {
                    kind: *kind,
                    key: key.clone(),
                    numel: *numel as u64,
                })
            }
            _ => Err("persistent id is not ('storage', type, key, location, numel)".into()),
        }
    }

    fn reduce(&mut self, func: &Value, args: &Value) -> R<Value> {
        let Some(Obj::Global(g)) = self.obj(func) else {
            return Err("REDUCE on something other than a known global".into());
        };
        let g = *g;
        let Some(Obj::Tuple(args)) = self.obj(args) else {
            return Err("REDUCE arguments are not a tuple".into());
        };
        match (g, args.as_slice()) {
            (Global::OrderedDict, []) => self.new_obj(Obj::Dict(Vec::new())),
            // (storage, offset, size, stride, requires_grad, hooks[, metadata]) for v2,
            // (storage, offset, size, stride) for the original.
            (
                Global::RebuildTensorV2,
                [s, o, size, stride, _, _] | [s, o, size, stride, _, _, _],
            )
            | (Global::RebuildTensor, [s, o, size, stride]) => {
                let t = self.tensor_ref(s, o, size, stride)?;
                self.new_obj(Obj::Tensor(t))
            }
            // (tensor, requires_grad, hooks): a saved nn.Parameter is just its tensor here.
            (Global::RebuildParameter, [t, _, _]) => match self.obj(t) {
                Some(Obj::Tensor(_)) => Ok(t.clone()),
                _ => Err("_rebuild_parameter of a non-tensor".into()),
            },
            _ => Err(format!("unexpected arguments to {}", g.name())),
        }
    }

    fn tensor_ref(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
    ) -> R<TensorRef> {
        let Some(Obj::Storage(storage)) = self.obj(storage) else {
            return Err("tensor storage is not a persistent storage".into());
        };
        let Value::Int(offset) = *offset else {
            return Err("tensor storage offset is not an int".into());
        };
        let size = self
            .int_tuple(size)
            .ok_or("tensor size is not a tuple of ints >= 0")?;
        let stride = self
            .int_tuple(stride)
            .ok_or("tensor stride is not a tuple of ints >= 0")?;
        if offset < 0 || size.len() != stride.len() {
            return Err(format!(
                "tensor view offset {offset}, size {size:?}, stride {stride:?}"
            ));
        }
        Ok(TensorRef {
            storage: storage.clone(),
            offset: offset as u64,
            size,
            stride,
        })
    }

    fn int_tuple(&self, v: &Value) -> Option<Vec<u64>> {
        let Some(Obj::Tuple(items)) = self.obj(v) else {
            return None;
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Some(*i as u64),
                _ => None,
            })
            .collect()
    }

    /// The root must be a dict of tensor-valued string keys (a `state_dict`).
    fn state_dict(&self, root: Value) -> R<Vec<(String, TensorRef)>> {
        let Some(Obj::Dict(top)) = self.obj(&root) else {
            return Err("top-level object is not a dict (expected a state_dict)".into());
        };
        let mut items = top;
        // A training checkpoint (Stable Diffusion's `.ckpt`, PyTorch Lightning's) keeps the
        // weights under "state_dict", beside counters such as "global_step". One level only: a
        // pickle can make a dict contain itself.
        let nested = items.iter().find_map(|(k, v)| match (k, self.obj(v)) {
            (Value::Str(k), Some(Obj::Dict(d))) if &**k == "state_dict" => Some(d),
            _ => None,
        });
        if let Some(d) = nested {
            items = d;
        }
        let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(items.len());
        let mut seen: HashMap<Rc<str>, usize> = HashMap::new();
        for (k, v) in items {
            let Value::Str(k) = k else {
                return Err(format!("state_dict key {k:?} is not a string"));
            };
            let Some(Obj::Tensor(t)) = self.obj(v) else {
                return Err(format!("state_dict value of \"{k}\" is not a tensor"));
            };
            match seen.get(k) {
                Some(&i) => out[i].1 = t.clone(),
                None => {
                    seen.insert(k.clone(), out.len());
                    out.push((k.to_string(), t.clone()));
                }
            }
        }
        Ok(out)
    }
}

fn op_name(op: u8) -> String {
    let name = match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'U' => "SHORT_BINSTRING",
        b'T' => "BINSTRING",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        0x8b => "LONG4",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'g' => "GET",
        b'p' => "PUT",
        b'd' => "DICT",
        b'l' => "LIST",
        _ => return format!("0x{op:02x}"),
    };
    format!("{name} (0x{op:02x})")
}
