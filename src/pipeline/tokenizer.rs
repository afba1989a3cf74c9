//! CLIP's byte-pair-encoding tokenizer files, `vocab.json` and `merges.txt`, which the Swift
//! pipeline reads from a Resources folder: copied from a diffusers `tokenizer/` folder, or
//! generated from OpenAI's BPE list byte for byte as Hugging Face's `CLIPTokenizer` files are.
//! A minimal encoder over the same files turns a prompt into ids, so tests can check the files
//! and feed text encoders.
//!
//! The list is vendored beside this file as `clip_bpe_merges.txt`: the 48894 merges CLIP reads
//! from `bpe_simple_vocab_16e6.txt.gz` (its lines 2 to 48895, unchanged; provenance and license
//! in `LICENSE-CLIP-BPE`). That is 0.5 MB of text instead of the 1.3 MB archive of 262144
//! merges CLIP never reads, and it needs no decompressor.
//!
//! `vocab.json` is CLIP's `SimpleTokenizer` vocabulary (`clip/simple_tokenizer.py`): the 256
//! byte symbols of `bytes_to_unicode`, the same with `</w>`, the merges joined, then
//! `<|startoftext|>` and `<|endoftext|>`, ids in that order. Hugging Face writes it as
//! `json.dumps(vocab, ensure_ascii=False)`: one line, `", "` and `": "` separators, keys in id
//! order, non-ASCII as raw UTF-8, no final newline. `merges.txt` is `#version: 0.2` and the
//! merges, every line newline-terminated (the Swift reader drops an unterminated last line).
//!
//! The encoder does what CLIP's does for ASCII prompts (words, digits, punctuation,
//! contractions, the two special tokens written out). It does not repair text (CLIP's `ftfy`),
//! unescape HTML entities (CLIP's `html.unescape`) or NFC-normalize (Hugging Face's fast
//! tokenizer), and it approximates the pre-tokenizer's `\p{L}` by `char::is_alphabetic` minus
//! numbers (which also takes combining marks and a few other alphabetic non-letters) and `\s` by
//! Unicode White_Space: non-ASCII prompts may tokenize differently.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The special tokens' ids in the generated vocabulary (and in every CLIP one).
pub const START_OF_TEXT_ID: u32 = 49406;
pub const END_OF_TEXT_ID: u32 = 49407;
/// The positions CLIP's text encoders take.
pub const CONTEXT_LENGTH: usize = 77;

const MERGES: &str = include_str!("clip_bpe_merges.txt");
const MERGES_HEADER: &str = "#version: 0.2\n";
const END_OF_WORD: &str = "</w>";
/// Far above the real files (0.9 MB and 0.5 MB): a bound on what a tokenizer folder may make us
/// read into memory.
const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no such folder (--tokenizer wants a folder with {VOCAB_FILE} and {MERGES_FILE})", path.display())]
    NoFolder { path: PathBuf },
    #[error("{}: not found; a tokenizer folder holds {VOCAB_FILE} and {MERGES_FILE}", path.display())]
    Missing { path: PathBuf },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {size} bytes, more than the {MAX_FILE_BYTES}-byte limit for a tokenizer file; refused", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{file}: not a JSON object of token to id ({reason})")]
    VocabNotObject { file: String, reason: String },
    #[error("{file}: token {token:?} has id {value}, not an integer from 0 to 4294967295")]
    VocabBadId {
        file: String,
        token: String,
        value: String,
    },
    #[error("{file}: no token {token:?}, which every CLIP vocabulary has")]
    VocabMissingToken { file: String, token: String },
    #[error("{file}: not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("{file}: line {line}: {reason}")]
    Merges {
        file: String,
        line: usize,
        reason: String,
    },
}

/// Where [`copy_or_generate`] took the files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// Copied from this folder.
    Copied(PathBuf),
    /// Generated from the vendored BPE list.
    Generated,
}

/// The generated `merges.txt`.
pub fn merges_txt() -> String {
    let mut s = String::with_capacity(MERGES_HEADER.len() + MERGES.len());
    s.push_str(MERGES_HEADER);
    s.push_str(MERGES);
    s
}

/// The generated `vocab.json`.
pub fn vocab_json() -> String {
    let mut out = String::with_capacity(1 << 20);
    out.push('{');
    for (id, token) in vocab_tokens().iter().enumerate() {
        if id > 0 {
            out.push_str(", ");
        }
        push_json_string(&mut out, token);
        out.push_str(": ");
        out.push_str(&id.to_string());
    }
    out.push('}');
    out
}

/// Writes the generated `vocab.json` and `merges.txt` into `dir`.
pub fn write_files(dir: &Path) -> Result<(), TokenizerError> {
    write(&dir.join(VOCAB_FILE), vocab_json().as_bytes())?;
    write(&dir.join(MERGES_FILE), merges_txt().as_bytes())
}

/// Puts `vocab.json` and `merges.txt` into `out`: copied from `tokenizer_dir` (a diffusers
/// `tokenizer/` folder) when given, after checking that they form a CLIP tokenizer, else
/// generated. Nothing is written when the given files are refused.
pub fn copy_or_generate(
    tokenizer_dir: Option<&Path>,
    out: &Path,
) -> Result<TokenizerSource, TokenizerError> {
    let Some(dir) = tokenizer_dir else {
        write_files(out)?;
        return Ok(TokenizerSource::Generated);
    };
    let (vocab, merges) = read_checked(dir)?;
    // From memory, not fs::copy: `out` may be `tokenizer_dir` itself, which a copy would truncate.
    write(&out.join(VOCAB_FILE), &vocab)?;
    write(&out.join(MERGES_FILE), &merges)?;
    Ok(TokenizerSource::Copied(dir.to_path_buf()))
}

/// Checks that `dir` holds a `vocab.json` and a `merges.txt` that form a CLIP tokenizer (what
/// [`copy_or_generate`] checks before copying).
pub fn check_files(dir: &Path) -> Result<(), TokenizerError> {
    read_checked(dir).map(|_| ())
}

/// The two files' bytes, once they are known to form a CLIP tokenizer.
fn read_checked(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TokenizerError> {
    if !dir.is_dir() {
        return Err(TokenizerError::NoFolder {
            path: dir.to_path_buf(),
        });
    }
    let vocab_path = dir.join(VOCAB_FILE);
    let merges_path = dir.join(MERGES_FILE);
    let vocab = read_capped(&vocab_path)?;
    let merges = read_capped(&merges_path)?;
    Tokenizer::parse_named(
        &vocab,
        &vocab_path.display().to_string(),
        &merges,
        &merges_path.display().to_string(),
    )?;
    Ok((vocab, merges))
}

/// `text` as ids, `<|startoftext|>` first and `<|endoftext|>` last, with the tokenizer these
/// two files' texts describe.
pub fn encode(vocab_json: &str, merges_txt: &str, text: &str) -> Result<Vec<u32>, TokenizerError> {
    Ok(Tokenizer::parse(vocab_json, merges_txt)?.encode(text))
}

/// CLIP's tokenizer, read from a `vocab.json` and a `merges.txt`.
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    /// Merge rank by its `merges.txt` line, `"first second"`.
    ranks: HashMap<String, usize>,
    start: u32,
    end: u32,
}

impl Tokenizer {
    /// Reads the two files' texts (errors name them `vocab.json` and `merges.txt`).
    pub fn parse(vocab_json: &str, merges_txt: &str) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::parse_named(
            vocab_json.as_bytes(),
            VOCAB_FILE,
            merges_txt.as_bytes(),
            MERGES_FILE,
        )
    }

    /// Checks what [`Tokenizer::encode`] relies on, so that it cannot meet a symbol without an
    /// id: every byte symbol (with and without `</w>`), every merge's result and both special
    /// tokens are in the vocabulary.
    fn parse_named(
        vocab: &[u8],
        vocab_name: &str,
        merges: &[u8],
        merges_name: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        let vocab = parse_vocab(vocab, vocab_name)?;
        let missing = |token: &str| TokenizerError::VocabMissingToken {
            file: vocab_name.to_string(),
            token: token.to_string(),
        };
        let start = *vocab
            .get(START_OF_TEXT)
            .ok_or_else(|| missing(START_OF_TEXT))?;
        let end = *vocab.get(END_OF_TEXT).ok_or_else(|| missing(END_OF_TEXT))?;
        for c in byte_chars() {
            for token in [c.to_string(), format!("{c}{END_OF_WORD}")] {
                if !vocab.contains_key(&token) {
                    return Err(missing(&token));
                }
            }
        }
        let text = std::str::from_utf8(merges).map_err(|_| TokenizerError::NotUtf8 {
            file: merges_name.to_string(),
        })?;
        let mut ranks = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if i == 0 && line.starts_with("#version") {
                continue;
            }
            let bad = |reason: String| TokenizerError::Merges {
                file: merges_name.to_string(),
                line: i + 1,
                reason,
            };
            let (first, second) = match line.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => (a, b),
                _ => {
                    let shown: String = line.chars().take(40).collect();
                    return Err(bad(format!(
                        "expected two symbols separated by one space, found {shown:?}"
                    )));
                }
            };
            let joined = format!("{first}{second}");
            if !vocab.contains_key(&joined) {
                return Err(bad(format!(
                    "merging {first:?} and {second:?} makes {joined:?}, which {vocab_name} lacks"
                )));
            }
            // A repeated merge takes its last rank, as CLIP's dict(zip(merges, range)) does.
            let rank = ranks.len();
            ranks.insert(line.to_string(), rank);
        }
        Ok(Tokenizer {
            vocab,
            ranks,
            start,
            end,
        })
    }

    /// `text` as ids, `<|startoftext|>` first and `<|endoftext|>` last. Lowercased, runs of
    /// whitespace as one space, split as CLIP's pre-tokenizer regex splits, each piece's UTF-8
    /// bytes mapped to byte symbols and merged by rank.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.start];
        ids.extend(self.encode_content(text));
        ids.push(self.end);
        ids
    }

    /// [`Tokenizer::encode`] cut and padded to `len` ids as diffusers feeds a text encoder
    /// (`padding="max_length", truncation=True`): at most `len - 2` content tokens between the
    /// special ones, then `pad` (`<|endoftext|>` for SD 1.x, `!` = 0 for SDXL's second encoder).
    pub fn encode_padded(&self, text: &str, len: usize, pad: u32) -> Vec<u32> {
        let mut content = self.encode_content(text);
        content.truncate(len.saturating_sub(2));
        let mut ids = Vec::with_capacity(len);
        ids.push(self.start);
        ids.extend(content);
        ids.push(self.end);
        ids.truncate(len);
        ids.resize(len, pad);
        ids
    }

    fn encode_content(&self, text: &str) -> Vec<u32> {
        let clean = text
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let bytes = byte_chars();
        let mut ids = Vec::new();
        for piece in pre_tokenize(&clean) {
            match piece {
                START_OF_TEXT => ids.push(self.start),
                END_OF_TEXT => ids.push(self.end),
                _ => {
                    let symbols: Vec<String> = piece
                        .bytes()
                        .map(|b| bytes[usize::from(b)].to_string())
                        .collect();
                    // parse_named checked every byte symbol and merge result: never the fallback.
                    ids.extend(
                        self.bpe(symbols)
                            .iter()
                            .map(|s| self.vocab.get(s).copied().unwrap_or(self.end)),
                    );
                }
            }
        }
        ids
    }

    /// Merges the adjacent pair of lowest rank, every occurrence left to right, until no pair
    /// has a rank (CLIP's `SimpleTokenizer.bpe`). The last symbol carries `</w>`.
    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        if let Some(last) = word.last_mut() {
            last.push_str(END_OF_WORD);
        }
        let mut key = String::new();
        let mut rank_of = |a: &str, b: &str| {
            key.clear();
            key.push_str(a);
            key.push(' ');
            key.push_str(b);
            self.ranks.get(&key).copied()
        };
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| rank_of(&w[0], &w[1]).map(|r| (r, w)))
                .min_by_key(|&(r, _)| r)
                .map(|(_, w)| (w[0].clone(), w[1].clone()));
            let Some((first, second)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// The pieces CLIP's pattern finds, in order:
/// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`.
/// At each position the first alternative that matches wins, so a run of punctuation swallows
/// an apostrophe or `<|` that does not start it; whitespace matches nothing and is skipped.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let letter = |c: char| c.is_alphabetic() && !c.is_numeric();
    let other = |c: char| !c.is_whitespace() && !c.is_alphabetic() && !c.is_numeric();
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
            continue;
        } else if let Some(special) = [START_OF_TEXT, END_OF_TEXT]
            .into_iter()
            .chain(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"])
            .find(|p| rest.starts_with(p))
        {
            special.len()
        } else if letter(c) {
            run_len(rest, letter)
        } else if c.is_numeric() {
            c.len_utf8()
        } else {
            run_len(rest, other)
        };
        let (piece, tail) = rest.split_at(len);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Bytes at the start of `s` whose characters all satisfy `keep`.
fn run_len(s: &str, keep: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !keep(c))
        .map_or(s.len(), |(i, _)| i)
}

/// GPT-2's reversible map from bytes to printable characters (CLIP's `bytes_to_unicode`): the
/// printable Latin-1 bytes stand for themselves, the others (controls, space, DEL, NBSP, soft
/// hyphen) take U+0100, U+0101, ... in byte order.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        map[usize::from(b)] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            // Below the surrogates, so always a char.
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    map
}

fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The vocabulary in id order: byte symbols in `bytes_to_unicode`'s order (the printable bytes,
/// then the others), the same with `</w>`, the merges joined, the two special tokens.
fn vocab_tokens() -> Vec<String> {
    let map = byte_chars();
    let order = (0..=255u8)
        .filter(|&b| printable(b))
        .chain((0..=255u8).filter(|&b| !printable(b)));
    let symbols: Vec<String> = order.map(|b| map[usize::from(b)].to_string()).collect();
    let mut tokens = symbols.clone();
    tokens.extend(symbols.iter().map(|s| format!("{s}{END_OF_WORD}")));
    tokens.extend(MERGES.lines().map(|line| line.replace(' ', "")));
    tokens.push(START_OF_TEXT.to_string());
    tokens.push(END_OF_TEXT.to_string());
    tokens
}

/// `s` as Python's `json.dumps(s, ensure_ascii=False)` writes it.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn parse_vocab(bytes: &[u8], file: &str) -> Result<HashMap<String, u32>, TokenizerError> {
    let not_object = |reason: String| TokenizerError::VocabNotObject {
        file: file.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| not_object(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(not_object(format!("found {}", json_kind(&value))));
    };
    let mut vocab = HashMap::with_capacity(map.len());
    for (token, id) in map {
        let Some(n) = id.as_u64().and_then(|n| u32::try_from(n).ok()) else {
            return Err(TokenizerError::VocabBadId {
                file: file.to_string(),
                token,
                value: id.to_string(),
            });
        };
        vocab.insert(token, n);
    }
    Ok(vocab)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(TokenizerError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(TokenizerError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(TokenizerError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    fs::write(path, bytes).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/pipeline/diffusers/tokenizer")
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = fixture_dir().join(name);
        fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    const CAT: [u32; 7] = [49406, 320, 1125, 539, 320, 2368, 49407];

    #[test]
    fn generated_files_are_hugging_faces_byte_for_byte() {
        let vocab = vocab_json();
        let want = fixture(VOCAB_FILE);
        // Located first, so that a failure says where.
        let at = vocab.bytes().zip(&want).position(|(a, &b)| a != b);
        assert_eq!(at, None, "vocab.json differs at byte {at:?}");
        assert_eq!(vocab.as_bytes(), &want[..]);
        assert_eq!(merges_txt().as_bytes(), &fixture(MERGES_FILE)[..]);
    }

    #[test]
    fn generated_vocab_is_clips_layout() {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&vocab_json()).unwrap();
        // Every token distinct: 256 + 256 + 48894 + 2.
        assert_eq!(map.len(), 49408);
        assert_eq!(MERGES.lines().count(), 48894);
        let id = |t: &str| map.get(t).and_then(|v| v.as_u64());
        assert_eq!(id("!"), Some(0));
        assert_eq!(id("\""), Some(1));
        assert_eq!(id("\\"), Some(59));
        // Byte 0 is the first of the non-printable bytes, after the 188 printable ones.
        assert_eq!(id("\u{100}"), Some(188));
        assert_eq!(id("\u{120}"), Some(188 + 32));
        assert_eq!(id("!</w>"), Some(256));
        assert_eq!(id("in"), Some(512));
        assert_eq!(id(START_OF_TEXT), Some(u64::from(START_OF_TEXT_ID)));
        assert_eq!(id(END_OF_TEXT), Some(u64::from(END_OF_TEXT_ID)));
    }

    #[test]
    fn json_strings_escape_as_python_does() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn a_photo_of_a_cat() {
        let text = "a photo of a cat";
        assert_eq!(encode(&vocab_json(), &merges_txt(), text).unwrap(), CAT);
        let v = String::from_utf8(fixture(VOCAB_FILE)).unwrap();
        let m = String::from_utf8(fixture(MERGES_FILE)).unwrap();
        assert_eq!(encode(&v, &m, text).unwrap(), CAT);
    }

    /// Expected ids from CLIP's own `SimpleTokenizer` (clip/simple_tokenizer.py with the `regex`
    /// module; ftfy left out, it changes nothing here) with the two special tokens around.
    #[test]
    fn ascii_prompts_tokenize_as_clips_tokenizer() {
        let t = Tokenizer::parse(&vocab_json(), &merges_txt()).unwrap();
        let cases: &[(&str, &[u32])] = &[
            ("  A  Photo\tof a\nCAT ", &CAT),
            (
                "It's 2024: a dog's life!!! they'll've",
                &[
                    49406, 585, 568, 273, 271, 273, 275, 281, 320, 1929, 568, 970, 995, 889, 1342,
                    1200, 49407,
                ],
            ),
            (
                "hello<|endoftext|>world <|startoftext|>x",
                &[49406, 3306, 49407, 1002, 49406, 343, 49407],
            ),
            (
                "don't'''s  x'd 'll",
                &[49406, 847, 713, 6, 8445, 338, 343, 1896, 1342, 49407],
            ),
            (
                "a,b.c-d 42x3.14",
                &[
                    49406, 320, 267, 321, 269, 322, 268, 323, 275, 273, 343, 274, 269, 272, 275,
                    49407,
                ],
            ),
            ("", &[49406, 49407]),
            (
                "supercalifragilisticexpialidocious",
                &[
                    49406, 1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466, 49407,
                ],
            ),
            ("café naïve", &[49406, 15304, 1097, 35689, 563, 49407]),
            ("!'s ''s", &[49406, 13222, 338, 8445, 338, 49407]),
        ];
        for (text, want) in cases {
            assert_eq!(t.encode(text), *want, "{text:?}");
        }
    }

    /// The fixture's reference ids, made by diffusers' `CLIPTokenizer` padded to 77 with 49407.
    #[test]
    fn padded_ids_match_the_pipeline_reference() {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/pipeline/reference.safetensors");
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            let v = st.tensor(key).unwrap();
            assert_eq!(v.shape(), [1, CONTEXT_LENGTH]);
            assert_eq!(v.dtype(), safetensors::Dtype::I32);
            v.data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let t = Tokenizer::parse(&vocab_json(), &merges_txt()).unwrap();
        let prompt = t.encode_padded("a photo of a cat", CONTEXT_LENGTH, END_OF_TEXT_ID);
        assert_eq!(prompt, ids("prompt_ids"));
        assert_eq!(prompt[..7], CAT);
        let negative = t.encode_padded("", CONTEXT_LENGTH, END_OF_TEXT_ID);
        assert_eq!(negative, ids("negative_ids"));
    }

    #[test]
    fn long_prompts_keep_75_tokens_between_the_special_ones() {
        let t = Tokenizer::parse(&vocab_json(), &merges_txt()).unwrap();
        let ids = t.encode_padded(&"cat ".repeat(100), CONTEXT_LENGTH, 0);
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!(ids[0], START_OF_TEXT_ID);
        assert!(ids[1..76].iter().all(|&i| i == 2368));
        assert_eq!(ids[76], END_OF_TEXT_ID);
        // SDXL's second encoder pads with `!`.
        assert_eq!(
            t.encode_padded("a cat", 6, 0),
            [49406, 320, 2368, 49407, 0, 0]
        );
    }

    #[test]
    fn generates_without_a_folder_and_copies_a_folder() {
        let out = tempfile::tempdir().unwrap();
        let read = |dir: &Path, name: &str| fs::read(dir.join(name)).unwrap();
        let got = copy_or_generate(None, out.path()).unwrap();
        assert_eq!(got, TokenizerSource::Generated);
        assert_eq!(read(out.path(), VOCAB_FILE), vocab_json().as_bytes());
        assert_eq!(read(out.path(), MERGES_FILE), merges_txt().as_bytes());

        // A valid folder is copied as it is, also where it differs from the generated files
        // (a final newline, no #version line).
        let src = tempfile::tempdir().unwrap();
        let vocab = format!("{}\n", vocab_json());
        fs::write(src.path().join(VOCAB_FILE), &vocab).unwrap();
        fs::write(src.path().join(MERGES_FILE), MERGES).unwrap();
        let out = tempfile::tempdir().unwrap();
        let got = copy_or_generate(Some(src.path()), out.path()).unwrap();
        assert_eq!(got, TokenizerSource::Copied(src.path().to_path_buf()));
        assert_eq!(read(out.path(), VOCAB_FILE), vocab.as_bytes());
        assert_eq!(read(out.path(), MERGES_FILE), MERGES.as_bytes());

        // Copying a folder onto itself leaves it whole.
        copy_or_generate(Some(src.path()), src.path()).unwrap();
        assert_eq!(read(src.path(), VOCAB_FILE), vocab.as_bytes());
        assert_eq!(read(src.path(), MERGES_FILE), MERGES.as_bytes());

        // The fixture's folder, as the pipeline will copy it.
        let out = tempfile::tempdir().unwrap();
        copy_or_generate(Some(&fixture_dir()), out.path()).unwrap();
        assert_eq!(read(out.path(), VOCAB_FILE), fixture(VOCAB_FILE));
    }

    /// `copy_or_generate` on a folder holding `vocab` and `merges` (None: file left out): its
    /// message, after checking that it is one line and that nothing was written.
    fn refusal(vocab: Option<&[u8]>, merges: Option<&[u8]>) -> String {
        let src = tempfile::tempdir().unwrap();
        if let Some(v) = vocab {
            fs::write(src.path().join(VOCAB_FILE), v).unwrap();
        }
        if let Some(m) = merges {
            fs::write(src.path().join(MERGES_FILE), m).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let e = copy_or_generate(Some(src.path()), out.path())
            .expect_err("a bad tokenizer folder was accepted")
            .to_string();
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "{e}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn refuses_bad_tokenizer_folders_naming_the_file() {
        let vocab = vocab_json();
        let merges = merges_txt();
        let (v, m) = (Some(vocab.as_bytes()), Some(merges.as_bytes()));
        let check = |e: String, tail: &str| assert!(e.ends_with(tail), "{e}\nwanted …{tail}");

        let holds = "not found; a tokenizer folder holds vocab.json and merges.txt";
        check(refusal(None, m), &format!("/vocab.json: {holds}"));
        check(refusal(v, None), &format!("/merges.txt: {holds}"));

        let not_object = "/vocab.json: not a JSON object of token to id";
        check(
            refusal(Some(b"[1, 2]"), m),
            &format!("{not_object} (found an array)"),
        );
        let e = refusal(Some(b"{\"a\": 1,"), m);
        assert!(e.contains(&format!("{not_object} (EOF")), "{e}");
        let range = "not an integer from 0 to 4294967295";
        check(
            refusal(Some(b"{\"a\": -1}"), m),
            &format!("/vocab.json: token \"a\" has id -1, {range}"),
        );
        check(
            refusal(Some(b"{\"a\": \"1\"}"), m),
            &format!("/vocab.json: token \"a\" has id \"1\", {range}"),
        );
        check(
            refusal(Some(b"{\"a\": 4294967296}"), m),
            &format!("/vocab.json: token \"a\" has id 4294967296, {range}"),
        );

        let every = "which every CLIP vocabulary has";
        let no_end = vocab.replace(", \"<|endoftext|>\": 49407", "");
        check(
            refusal(Some(no_end.as_bytes()), m),
            &format!("/vocab.json: no token \"<|endoftext|>\", {every}"),
        );
        let no_space = vocab.replace("\"\u{120}</w>\": 476, ", "");
        assert_ne!(no_space, vocab);
        check(
            refusal(Some(no_space.as_bytes()), m),
            &format!("/vocab.json: no token \"\u{120}</w>\", {every}"),
        );

        let two = "expected two symbols separated by one space, found";
        check(
            refusal(v, Some(b"#version: 0.2\ni n\nt  h\n")),
            &format!("/merges.txt: line 3: {two} \"t  h\""),
        );
        check(
            refusal(v, Some(b"#version: 0.2\ni n\n\nt h\n")),
            &format!("/merges.txt: line 3: {two} \"\""),
        );
        let e = refusal(v, Some("i n\nq \u{e9}\n".as_bytes()));
        let made = "/merges.txt: line 2: merging \"q\" and \"\u{e9}\" makes \"q\u{e9}\", which ";
        assert!(e.contains(made) && e.ends_with("/vocab.json lacks"), "{e}");
        check(
            refusal(v, Some(b"i n\n\xff\n")),
            "/merges.txt: not UTF-8 text",
        );

        let out = tempfile::tempdir().unwrap();
        let e = copy_or_generate(Some(&out.path().join("nowhere")), out.path())
            .unwrap_err()
            .to_string();
        check(
            e,
            "/nowhere: no such folder (--tokenizer wants a folder with vocab.json and merges.txt)",
        );
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);

        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join(VOCAB_FILE)).unwrap();
        fs::write(src.path().join(MERGES_FILE), MERGES).unwrap();
        let e = copy_or_generate(Some(src.path()), out.path()).unwrap_err();
        check(e.to_string(), "/vocab.json: not a regular file");
    }

    #[test]
    fn pre_tokenizer_pieces() {
        assert_eq!(
            pre_tokenize("it's a <|endoftext|>!'s x2 ...'ll"),
            [
                "it",
                "'s",
                "a",
                "<|endoftext|>",
                "!'",
                "s",
                "x",
                "2",
                "...'",
                "ll"
            ]
        );
    }
}
