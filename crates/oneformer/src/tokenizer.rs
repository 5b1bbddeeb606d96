//! OneFormer's task / text tokenizer: CLIP byte-level BPE with the ids of transformers'
//! `CLIPTokenizer`, and the padding of `OneFormerProcessor`.
//!
//! OneFormer conditions its queries on a task prompt, `"the task is {semantic|instance|panoptic}"`,
//! tokenized with CLIP's BPE and fed to the task MLP as a `(batch, 77)` float tensor of token ids;
//! during training the text mapper also reads `num_text` entries such as `"a photo with a car"`.
//!
//! Reference files (transformers 5.24):
//! - `models/clip/tokenization_clip.py` (`CLIPTokenizer`; the same pipeline as `CLIPConverter` in
//!   `convert_slow_tokenizer.py`): normalizer NFC, `\s+` -> `" "`, lowercase; pre-tokenizer
//!   `Split(<CLIP pattern>, removed, invert)` then `ByteLevel(add_prefix_space=false)`; BPE with
//!   end-of-word suffix `</w>` and unknown token `<|endoftext|>`; post-processor
//!   `<|startoftext|> .. <|endoftext|>`; both are special added tokens, matched before normalization.
//! - `models/oneformer/processing_oneformer.py` (`_preprocess_text`): `padding="max_length"`,
//!   `truncation=True` to `task_seq_length` / `max_seq_length` (77), then `input_ids *
//!   attention_mask`, so **padding positions hold id 0**, not the pad token `<|endoftext|>` (49407),
//!   and a truncated sequence still ends with `<|endoftext|>`. The model casts `task_inputs` to the
//!   float dtype (`modeling_oneformer.py`, `self.task_encoder(task_inputs.to(self.dtype))`).
//! - `models/oneformer/image_processing_oneformer.py` (`get_{semantic,instance,panoptic}_annotations`):
//!   the text entries, see [`text_entries`].
//!
//! The vocabulary is OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz` (MIT; the file open_clip and CLIP
//! ship), embedded in the crate and expanded exactly as CLIP's `SimpleTokenizer` does: the 256
//! `bytes_to_unicode` characters, the same with `</w>`, the first 48 894 merges joined, then
//! `<|startoftext|>` and `<|endoftext|>`: 49 408 tokens, identical to the `vocab.json` /
//! `merges.txt` of HF CLIP checkpoints (and of `shi-labs/oneformer_*`), which
//! [`TaskTokenizer::from_files`] reads.
//!
//! Parity: `tests/parity/gen_tokenizer.py` stores HF's ids for task prompts, the ADE20K class
//! prompts and odd strings; `crates/oneformer/tests/tokenizer.rs` checks them.
//!
//! # Shapes
//! - [`TaskTokenizer::task_inputs`]: `(1, len)` f32; [`TaskTokenizer::task_inputs_batch`]:
//!   `(batch, len)` f32.
//! - [`TaskTokenizer::text_inputs`]: `(num_text, len)` u32 (HF: int64), per image.
//!
//! # Example
//! ```
//! use candle_core::Device;
//! use segkit_oneformer::tokenizer::{Task, TaskTokenizer, SEQ_LEN};
//!
//! let tok = TaskTokenizer::clip_default()?;
//! assert_eq!(tok.encode("the task is semantic")?, [49406, 518, 10549, 533, 29119, 1550, 49407]);
//! let task: Task = "panoptic".parse()?;
//! let t = tok.task_inputs(task, SEQ_LEN, &Device::Cpu)?;
//! assert_eq!(t.dims(), &[1, 77]);
//! # Ok::<(), segkit_oneformer::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// The beginning-of-text token (`CLIPTokenizer.bos_token`).
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token (`CLIPTokenizer.eos_token`, also its `unk_token` and `pad_token`).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// `OneFormerProcessor`'s default `task_seq_length` and `max_seq_length`.
pub const SEQ_LEN: usize = 77;
/// Number of tokens of the CLIP vocabulary (`len(CLIPTokenizer)`).
pub const CLIP_VOCAB_SIZE: usize = 49_408;

/// Merges CLIP keeps from the BPE file: `lines[1 : 49152 - 256 - 2 + 1]`.
const CLIP_NUM_MERGES: usize = 49_152 - 256 - 2;
/// OpenAI CLIP's BPE merges (sha256 924691ac288e5440…a6ecd48d6804a).
static CLIP_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
/// `CLIPTokenizer`'s split pattern (transformers 5: the special tokens come first).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A OneFormer task: which segmentation the task token asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Semantic segmentation (one mask per class).
    Semantic,
    /// Instance segmentation (one mask per "thing" object).
    Instance,
    /// Panoptic segmentation (stuff classes and thing instances).
    Panoptic,
}

impl Task {
    /// All tasks, in the order OneFormer's papers list them.
    pub const ALL: [Task; 3] = [Task::Semantic, Task::Instance, Task::Panoptic];

    /// The name HF's processor takes: `"semantic"`, `"instance"` or `"panoptic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Semantic => "semantic",
            Task::Instance => "instance",
            Task::Panoptic => "panoptic",
        }
    }

    /// The task prompt the processor tokenizes: `"the task is {task}"`.
    pub fn prompt(self) -> String {
        format!("the task is {}", self.as_str())
    }

    /// The filler of unused text entries: `"a semantic photo"`, `"an instance photo"`, and,
    /// verbatim from HF and the OneFormer repository, `"an panoptic photo"`.
    pub fn filler_text(self) -> &'static str {
        match self {
            Task::Semantic => "a semantic photo",
            Task::Instance => "an instance photo",
            Task::Panoptic => "an panoptic photo",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = Error;

    /// Parses `semantic`, `instance` or `panoptic` (ASCII case-insensitive, surrounding
    /// whitespace ignored).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        Task::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown OneFormer task {s:?}; valid tasks: semantic, instance, panoptic"
                ))
            })
    }
}

/// The text-mapper prompt of one annotated class: `"a photo with a {class_name}"`.
pub fn class_prompt(class_name: &str) -> String {
    format!("a photo with a {class_name}")
}

/// The `num_text` text entries `OneFormerImageProcessor` builds for one training image
/// (`get_semantic_annotations` / `get_instance_annotations` / `get_panoptic_annotations`).
///
/// `class_counts` lists, **in the dataset's class order** (the metadata's `class_names`), each
/// class with the number of its annotations that the task keeps: semantic, 1 per class present;
/// instance, the number of non-empty masks of each thing class; panoptic, the number of non-empty
/// segments of each class. Classes with count 0 may be listed or left out. Each class contributes
/// [`class_prompt`] `count` times, in that order, until `num_text` entries are filled; the rest
/// is [`Task::filler_text`].
///
/// HF keeps the per-class counts in one dictionary for a whole batch, so in a batch the i-th
/// image's entries also repeat the classes of images `0..i`; this function is per image (what
/// a batch of one gives), the caller may add up counts to reproduce HF's batches.
pub fn text_entries<S: AsRef<str>>(
    task: Task,
    class_counts: &[(S, usize)],
    num_text: usize,
) -> Vec<String> {
    let mut texts: Vec<String> = class_counts
        .iter()
        .flat_map(|(name, count)| std::iter::repeat_n(name.as_ref(), *count))
        .take(num_text)
        .map(class_prompt)
        .collect();
    texts.resize(num_text, task.filler_text().to_string());
    texts
}

/// CLIP's BPE tokenizer with the ids of HF's `CLIPTokenizer` and the padding of
/// `OneFormerProcessor` (see the module docs).
///
/// Building one expands and indexes 49k tokens (about 0.1 s): build it once and share it
/// (`&self` methods; it is `Send + Sync`).
#[derive(Clone)]
pub struct TaskTokenizer {
    tokenizer: Tokenizer,
    bos_id: u32,
    eos_id: u32,
}

impl fmt::Debug for TaskTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl TaskTokenizer {
    /// The tokenizer of OneFormer's HF checkpoints, built offline from the embedded CLIP
    /// vocabulary: the ids of `CLIPTokenizer.from_pretrained` on a CLIP checkpoint such as
    /// `shi-labs/oneformer_ade20k_swin_tiny`.
    pub fn clip_default() -> Result<Self> {
        let internal = |e: String| Error::Tokenizer(format!("embedded CLIP vocabulary: {e}"));
        let (vocab, merges) = clip_vocab_and_merges().map_err(internal)?;
        Self::build(vocab, merges).map_err(internal)
    }

    /// Loads a checkpoint's `vocab.json` (token -> id) and `merges.txt` (one `a b` pair a line,
    /// `#version` lines skipped), as `CLIPTokenizer.from_pretrained` does for a directory with
    /// these two files. Only the vocabulary comes from the files: the normalizer, split pattern
    /// and special tokens are CLIP's (the module docs). Errors name the file (and the line of a
    /// bad merge); a missing or unreadable file is a `segkit_core::Error::Io`.
    ///
    /// Unlike HF, empty lines in `merges.txt` are skipped and a non-integer id in `vocab.json`
    /// is an error rather than silently dropped.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| segkit_core::Error::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let vocab_text = read(vocab_json)?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab_text).map_err(|e| {
            Error::Tokenizer(format!(
                "{}: not a JSON object of token -> id: {e}",
                vocab_json.display()
            ))
        })?;
        let merges_text = read(merges_txt)?;
        let mut merges = Merges::new();
        for (i, line) in merges_text.lines().enumerate() {
            if line.is_empty() || line.starts_with("#version") {
                continue;
            }
            merges.push(parse_merge(line).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{} line {}: expected two space-separated tokens, got {:?}",
                    merges_txt.display(),
                    i + 1,
                    abbreviate(line)
                ))
            })?);
        }
        Self::build(vocab.into_iter().collect(), merges).map_err(|e| {
            Error::Tokenizer(format!(
                "{} + {}: {e}",
                vocab_json.display(),
                merges_txt.display()
            ))
        })
    }

    /// Assembles HF's CLIP pipeline around a vocabulary and its merges.
    fn build(vocab: Vocab, merges: Merges) -> std::result::Result<Self, String> {
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {t} token"))
        };
        let (bos_id, eos_id) = (id(BOS_TOKEN)?, id(EOS_TOKEN)?);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(EOS_TOKEN.to_string())
            .fuse_unk(false)
            .build()
            .map_err(|e| format!("bad BPE vocabulary/merges: {e}"))?;
        let e = |what: &'static str| move |err: tokenizers::Error| format!("{what}: {err}");
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
                .map_err(e("normalizer"))?
                .into(),
            Lowercase.into(),
        ]);
        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(e("pre-tokenizer"))?;
        let pre_tokenizer =
            PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()]);
        let post = RobertaProcessing::new((EOS_TOKEN.into(), eos_id), (BOS_TOKEN.into(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false);

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(normalizer))
            .map_err(e("normalizer"))?;
        tokenizer
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_post_processor(Some(post));
        tokenizer
            .add_special_tokens([
                AddedToken::from(BOS_TOKEN, true),
                AddedToken::from(EOS_TOKEN, true),
            ])
            .map_err(e("special tokens"))?;
        Ok(Self {
            tokenizer,
            bos_id,
            eos_id,
        })
    }

    /// Number of tokens (49 408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of [`BOS_TOKEN`] (49 406 for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of [`EOS_TOKEN`] (49 407 for CLIP).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The ids of `text` with `<|startoftext|>` first and `<|endoftext|>` last, untruncated:
    /// `CLIPTokenizer(text)["input_ids"]`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(format!("cannot encode {:?}: {e}", abbreviate(text))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The `len` ids `OneFormerProcessor` gives `text`: truncated to `len` (keeping the first
    /// `len - 2` text tokens between `<|startoftext|>` and `<|endoftext|>`), then padded with
    /// **0** (HF pads with `<|endoftext|>` and multiplies by the attention mask).
    ///
    /// `len` must be at least 2, the room for the two special tokens.
    pub fn encode_padded(&self, text: &str, len: usize) -> Result<Vec<u32>> {
        if len < 2 {
            return Err(Error::InvalidArgument(format!(
                "sequence length {len} cannot hold <|startoftext|> and <|endoftext|> (need >= 2)"
            )));
        }
        let mut ids = self.encode(text)?;
        if ids.len() > len {
            ids.truncate(len - 1);
            ids.push(self.eos_id);
        }
        ids.resize(len, 0);
        Ok(ids)
    }

    /// `task_inputs` for one image as the model receives it: `(1, len)` f32 token ids of
    /// [`Task::prompt`] (`len` = `task_seq_length`, [`SEQ_LEN`] in all HF configs).
    pub fn task_inputs(&self, task: Task, len: usize, device: &Device) -> Result<Tensor> {
        self.task_inputs_batch(&[task], len, device)
    }

    /// `task_inputs` for a batch, one task per image: `(tasks.len(), len)` f32.
    pub fn task_inputs_batch(&self, tasks: &[Task], len: usize, device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(tasks.len() * len);
        for task in tasks {
            let ids = self.encode_padded(&task.prompt(), len)?;
            data.extend(ids.into_iter().map(|id| id as f32));
        }
        Ok(Tensor::from_vec(data, (tasks.len(), len), device)?)
    }

    /// `text_inputs` for one image: each entry (e.g. from [`text_entries`]) through
    /// [`encode_padded`](Self::encode_padded), `(texts.len(), len)` u32 (`len` = `max_seq_length`,
    /// [`SEQ_LEN`]). Stack images along a new first dimension for HF's `(batch, num_text, len)`.
    pub fn text_inputs<S: AsRef<str>>(
        &self,
        texts: &[S],
        len: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let mut data = Vec::with_capacity(texts.len() * len);
        for text in texts {
            data.extend(self.encode_padded(text.as_ref(), len)?);
        }
        Ok(Tensor::from_vec(data, (texts.len(), len), device)?)
    }
}

/// One merges line `a b` (HF: `line.split(' ')` must give exactly two parts).
fn parse_merge(line: &str) -> Option<(String, String)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
        _ => None,
    }
}

/// The first 60 characters of `s`, for error messages.
fn abbreviate(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// OpenAI CLIP's `bytes_to_unicode` values, in its order: the printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut cs: Vec<u32> = (0..256).filter(|&b| printable(b)).collect();
    cs.extend(
        (0..256)
            .filter(|&b| !printable(b))
            .zip(256..)
            .map(|(_, c)| c),
    );
    cs.into_iter().filter_map(char::from_u32).collect()
}

/// CLIP's vocabulary and merges, expanded from the embedded BPE file as `SimpleTokenizer` does.
fn clip_vocab_and_merges() -> std::result::Result<(Vocab, Merges), String> {
    let gz = flate2::bufread::GzDecoder::new(CLIP_BPE_GZ);
    let mut lines = BufReader::new(gz).lines();
    // Line 0 is the "#version" header; CLIP keeps lines[1 : 48894 + 1].
    lines
        .next()
        .ok_or("empty BPE file")?
        .map_err(|e| e.to_string())?;
    let mut merges = Merges::with_capacity(CLIP_NUM_MERGES);
    for (i, line) in lines.take(CLIP_NUM_MERGES).enumerate() {
        let line = line.map_err(|e| format!("gunzip: {e}"))?;
        merges.push(parse_merge(&line).ok_or_else(|| format!("bad merge on line {}", i + 2))?);
    }
    if merges.len() != CLIP_NUM_MERGES {
        return Err(format!(
            "{} merges, expected {CLIP_NUM_MERGES}",
            merges.len()
        ));
    }
    let bytes = bytes_to_unicode();
    let tokens = bytes
        .iter()
        .map(|c| c.to_string())
        .chain(bytes.iter().map(|c| format!("{c}</w>")))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
        .chain([BOS_TOKEN.to_string(), EOS_TOKEN.to_string()]);
    let vocab: Vocab = tokens.zip(0u32..).collect();
    if vocab.len() != CLIP_VOCAB_SIZE {
        return Err(format!(
            "{} distinct tokens, expected {CLIP_VOCAB_SIZE}",
            vocab.len()
        ));
    }
    Ok((vocab, merges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_unicode_matches_clip() {
        let b = bytes_to_unicode();
        assert_eq!(b.len(), 256);
        assert_eq!(b[0], '!');
        assert_eq!(b[93], '~');
        assert_eq!(b[94], '¡');
        assert_eq!(b[188], 'Ā'); // byte 0 -> U+0100
        assert_eq!(b[255], 'Ń'); // byte 0xAD -> U+0143
        let mut sorted = b.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn text_entries_fill_and_cap() {
        let e = text_entries(Task::Instance, &[("person", 2), ("car", 0), ("bus", 5)], 4);
        assert_eq!(
            e,
            [
                "a photo with a person",
                "a photo with a person",
                "a photo with a bus",
                "a photo with a bus"
            ]
        );
        let e = text_entries::<&str>(Task::Panoptic, &[], 2);
        assert_eq!(e, ["an panoptic photo", "an panoptic photo"]);
    }

    #[test]
    fn merge_lines() {
        assert_eq!(parse_merge("a b"), Some(("a".into(), "b".into())));
        assert_eq!(parse_merge("a"), None);
        assert_eq!(parse_merge("a b c"), None);
        assert_eq!(parse_merge("a  b"), None);
    }
}
