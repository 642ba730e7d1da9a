//! The GPT-2 byte-level BPE tokenizer as SCA uses it (`sca-spec.md` §4.5, §2.11).
//!
//! Encoding adds no BOS and no prefix space, and matches the literal text `<|endoftext|>` as the
//! special token 50256. Decoding follows transformers 4.36's `GPT2TokenizerFast.decode`:
//! `skip_special_tokens` drops 50256, `clean_up_tokenization_spaces` applies transformers'
//! `clean_up_tokenization` (`" ."` -> `"."`, `" 's"` -> `"'s"`, ...).
//!
//! ```no_run
//! # fn main() -> sca_core::Result<()> {
//! use sca_core::tokenizer::Tokenizer;
//! let tok = Tokenizer::from_dir(std::path::Path::new("checkpoints/sca-gpt2-large-vg"))?;
//! let ids = tok.encode_caption("a red ball on the grass", 18)?;
//! assert_eq!(ids, [64, 2266, 2613, 319, 262, 8701, 50256]);
//! assert_eq!(tok.decode_caption(&ids)?, "a red ball on the grass");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::{Error, Result};

/// `<|endoftext|>`: GPT-2's BOS, EOS, UNK and (in SCA) padding token.
pub const EOS_TOKEN_ID: u32 = 50256;

/// The text of [`EOS_TOKEN_ID`].
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// Label id ignored by the loss; decoded as EOS (as SCA does before detokenizing).
pub const IGNORE_INDEX: i64 = -100;

/// GPT-2 tokenizer (byte-level BPE, 50257 tokens).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of special added tokens (dropped by `skip_special`).
    special: HashSet<u32>,
    /// Byte-level alphabet: char -> byte (GPT-2's `bytes_to_unicode`, inverted).
    char_bytes: HashMap<char, u8>,
    /// Cached: `tokenizers` rebuilds the whole vocabulary map to count it.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn terr(msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(msg.to_string())
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir`, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let bytes = std::fs::read(&json).map_err(|e| Error::io(&json, e))?;
            return Self::from_json_bytes(&bytes)
                .map_err(|e| terr(format!("{}: {}", json.display(), strip(e))));
        }
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges);
        }
        Err(terr(format!(
            "no tokenizer in {}: looked for tokenizer.json, or vocab.json + merges.txt",
            dir.display()
        )))
    }

    /// Parses the contents of a `tokenizer.json` (as written by transformers'
    /// `GPT2TokenizerFast`); it must be a byte-level BPE tokenizer.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| terr(format!("invalid tokenizer.json: {e}")))?;
        if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(terr(
                "tokenizer.json does not use the ByteLevel decoder of GPT-2's tokenizer",
            ));
        }
        Self::wrap(inner)
    }

    /// The tokenizer as `tokenizer.json` text (what a bundle ships).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| terr(format!("cannot serialize the tokenizer: {e}")))
    }

    /// Builds GPT-2's tokenizer in code from `vocab.json` + `merges.txt` (byte-level BPE, no
    /// prefix space, `<|endoftext|>` special), equivalent to transformers' `GPT2TokenizerFast`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let vocab_bytes = std::fs::read(vocab).map_err(|e| Error::io(vocab, e))?;
        let vocab_map: Vocab = serde_json::from_slice(&vocab_bytes)
            .map_err(|e| terr(format!("{}: invalid vocab JSON: {e}", vocab.display())))?;
        let merges_text = std::fs::read_to_string(merges).map_err(|e| Error::io(merges, e))?;
        let merge_list =
            parse_merges(&merges_text).map_err(|m| terr(format!("{}: {m}", merges.display())))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab_map, merge_list)
            .build()
            .map_err(|e| terr(format!("cannot build BPE from {}: {e}", vocab.display())))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(
            ByteLevel::default()
                .add_prefix_space(false)
                .trim_offsets(true)
                .use_regex(true),
        ));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[AddedToken::from(EOS_TOKEN, true)]);
        Self::wrap(inner)
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Result<Self> {
        if inner.token_to_id(EOS_TOKEN) != Some(EOS_TOKEN_ID) {
            return Err(terr(format!(
                "`{EOS_TOKEN}` is not token {EOS_TOKEN_ID}; not GPT-2's vocabulary"
            )));
        }
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let char_bytes = bytes_to_unicode()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            special,
            char_bytes,
            vocab_size,
        })
    }

    /// Token ids of `text`: no BOS, no prefix space; the literal `<|endoftext|>` becomes 50256.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| terr(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The byte-level BPE token strings of `text` (e.g. `["Hello", "Ġworld"]`).
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| terr(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Training captions: encode, keep the first `max_tokens` ids (18 in SCA), append EOS.
    pub fn encode_caption(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        ids.truncate(max_tokens);
        ids.push(EOS_TOKEN_ID);
        Ok(ids)
    }

    /// Text of `ids` with transformers 4.36 semantics: `skip_special` drops special tokens
    /// (50256), `clean_up` applies [`clean_up_tokenization`]. Id -100 (ignored label) is decoded
    /// as EOS; other negative or out-of-vocabulary ids are errors.
    pub fn decode<I: TokenId>(
        &self,
        ids: &[I],
        skip_special: bool,
        clean_up: bool,
    ) -> Result<String> {
        let vocab = self.vocab_size();
        let ids = ids
            .iter()
            .map(|&id| {
                let v = id.to_i64();
                let v = if v == IGNORE_INDEX {
                    EOS_TOKEN_ID as i64
                } else {
                    v
                };
                u32::try_from(v)
                    .ok()
                    .filter(|&u| (u as usize) < vocab)
                    .ok_or_else(|| {
                        terr(format!(
                            "token id {v} is out of range (vocabulary of {vocab})"
                        ))
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let text = self
            .inner
            .decode(&ids, skip_special)
            .map_err(|e| terr(format!("cannot decode {ids:?}: {e}")))?;
        Ok(if clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// A generated caption as SCA outputs it: `decode(ids, skip_special = true, clean_up = true)`.
    pub fn decode_caption(&self, ids: &[u32]) -> Result<String> {
        self.decode(ids, true, true)
    }

    /// Number of tokens, added tokens included (50257).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The token string of `id` (e.g. `"Ġworld"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Raw bytes of one token (`None` for special tokens, which captions skip).
    fn token_bytes(&self, id: u32) -> Result<Option<Vec<u8>>> {
        if self.special.contains(&id) {
            return Ok(None);
        }
        let tok = self.inner.id_to_token(id).ok_or_else(|| {
            terr(format!(
                "token id {id} is out of range (vocabulary of {})",
                self.vocab_size()
            ))
        })?;
        // Same rule as the ByteLevel decoder: map every char, or keep the token's UTF-8 as is.
        let mapped: Option<Vec<u8>> = tok
            .chars()
            .map(|c| self.char_bytes.get(&c).copied())
            .collect();
        Ok(Some(mapped.unwrap_or_else(|| tok.into_bytes())))
    }
}

/// Integer types accepted as token ids by [`Tokenizer::decode`].
pub trait TokenId: Copy {
    /// The id as i64 (-100 is the ignored label).
    fn to_i64(self) -> i64;
}

macro_rules! token_id {
    ($($t:ty),*) => {$(
        impl TokenId for $t {
            fn to_i64(self) -> i64 {
                self as i64
            }
        }
    )*};
}
token_id!(u32, i32, i64);

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization` (4.36): removes the space before
/// punctuation and English contractions, replacement by replacement, in this order.
pub fn clean_up_tokenization(text: &str) -> String {
    CLEAN_UP
        .iter()
        .fold(text.to_string(), |s, (from, to)| s.replace(from, to))
}

const CLEAN_UP: [(&str, &str); 10] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

/// Longest pattern of [`CLEAN_UP`] minus one: a clean-up match starting before the last
/// `CLEAN_UP_REACH` chars of a text cannot reach past its end.
const CLEAN_UP_REACH: usize = 3;

fn parse_merges(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => out.push((a.to_string(), b.to_string())),
            _ => {
                return Err(format!(
                    "line {}: expected two tokens separated by a space",
                    n + 1
                ))
            }
        }
    }
    Ok(out)
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100...
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut n = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, b as char)
            } else {
                n += 1;
                (b, char::from_u32(255 + n).unwrap_or('\u{FFFD}'))
            }
        })
        .collect()
}

fn strip(e: Error) -> String {
    match e {
        Error::Tokenizer(m) => m,
        e => e.to_string(),
    }
}

/// Streaming detokenizer for generated captions: push ids one at a time and get the new text.
///
/// The concatenation of all pieces (including [`DecodeStream::finish`]) equals
/// [`Tokenizer::decode_caption`] of all ids. Incomplete UTF-8 sequences are held back, and so is
/// any text the clean-up could still change: everything after the last three consecutive
/// non-space chars (a clean-up pattern starts with a space and is at most four chars long), so
/// a short word like `" on"` appears together with the next token.
///
/// ```no_run
/// # fn main() -> sca_core::Result<()> {
/// # let tok = sca_core::tokenizer::Tokenizer::from_dir(std::path::Path::new("tok"))?;
/// use sca_core::tokenizer::DecodeStream;
/// let mut stream = DecodeStream::new(&tok);
/// let mut text = String::new();
/// for id in [64, 2266, 2613, 50256] {
///     if let Some(piece) = stream.push(id)? {
///         text.push_str(&piece);
///     }
/// }
/// text.extend(stream.finish()?);
/// assert_eq!(text, "a red ball");
/// # Ok(()) }
/// ```
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    state: DecodeState,
}

impl<'a> DecodeStream<'a> {
    /// A stream over `tok` with the caption settings (skip special tokens, clean up).
    pub fn new(tok: &'a Tokenizer) -> Self {
        DecodeStream {
            tok,
            state: DecodeState::default(),
        }
    }

    /// Adds one id; returns the text that became final, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.state.push(self.tok, id)
    }

    /// Ends the stream and returns the text still held back, if any.
    pub fn finish(self) -> Result<Option<String>> {
        self.state.finish()
    }
}

/// The state of a [`DecodeStream`] without the borrowed tokenizer, for callers that must own
/// it across calls (a browser worker decoding one token per event-loop turn).
#[derive(Debug, Clone, Default)]
pub struct DecodeState {
    /// Bytes of an incomplete UTF-8 sequence at the end.
    bytes: Vec<u8>,
    /// Decoded text not yet emitted (not yet cleaned up).
    pending: String,
    /// The last chars emitted before `pending` (at most `CLEAN_UP_REACH`).
    tail: String,
}

impl DecodeState {
    /// Adds one id decoded with `tok`; returns the text that became final, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        let Some(b) = tok.token_bytes(id)? else {
            return Ok(None);
        };
        self.bytes.extend(b);
        self.decode_bytes();
        Ok(self.emit())
    }

    /// Ends the stream and returns the text still held back, if any.
    pub fn finish(mut self) -> Result<Option<String>> {
        if !self.bytes.is_empty() {
            self.pending
                .push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.bytes)));
        }
        let out = clean_up_tokenization(&self.pending);
        Ok((!out.is_empty()).then_some(out))
    }

    /// Moves complete chars from `bytes` to `pending`, as `String::from_utf8_lossy` would decode
    /// them; keeps an incomplete trailing sequence.
    fn decode_bytes(&mut self) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.bytes[start..]) {
                Ok(s) => {
                    self.pending.push_str(s);
                    start = self.bytes.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by construction.
                    self.pending
                        .push_str(&String::from_utf8_lossy(&self.bytes[start..start + valid]));
                    match e.error_len() {
                        Some(n) => {
                            self.pending.push('\u{FFFD}');
                            start += valid + n;
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.bytes.drain(..start);
    }

    /// Emits the longest prefix of `pending` whose last `CLEAN_UP_REACH` chars (counting the
    /// already emitted tail) hold no space: no clean-up match can cross that cut, so
    /// `clean(a + b) == clean(a) + clean(b)`.
    fn emit(&mut self) -> Option<String> {
        let chars: Vec<(usize, char)> = self.pending.char_indices().collect();
        let tail: Vec<char> = self.tail.chars().collect();
        // Char at position j of tail ++ pending.
        let at = |j: usize| -> char {
            if j < tail.len() {
                tail[j]
            } else {
                chars[j - tail.len()].1
            }
        };
        let total = tail.len() + chars.len();
        let mut cut = None;
        for end in (tail.len() + 1..=total).rev() {
            if (end.saturating_sub(CLEAN_UP_REACH)..end).all(|j| at(j) != ' ') {
                cut = Some(end - tail.len());
                break;
            }
        }
        let n = cut?;
        let byte_cut = chars.get(n).map_or(self.pending.len(), |&(i, _)| i);
        let rest = self.pending.split_off(byte_cut);
        let done = std::mem::replace(&mut self.pending, rest);
        let mut t: Vec<char> = tail.into_iter().chain(done.chars()).collect();
        let keep = t.len().saturating_sub(CLEAN_UP_REACH);
        self.tail = t.drain(keep..).collect();
        let out = clean_up_tokenization(&done);
        (!out.is_empty()).then_some(out)
    }
}
