//! Parity of `segkit_oneformer::tokenizer` with transformers' `CLIPTokenizer` and
//! `OneFormerProcessor` (fixtures from tests/parity/gen_tokenizer.py), and the file-loading paths.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use segkit_oneformer::tokenizer::{
    text_entries, Task, TaskTokenizer, CLIP_VOCAB_SIZE, EOS_TOKEN, SEQ_LEN,
};
use segkit_oneformer::Error;
use serde_json::Value;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer"
);
const BPE_GZ: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/bpe_simple_vocab_16e6.txt.gz"
);

fn fixture(name: &str) -> Value {
    let path = Path::new(FIXTURES).join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `cargo xtask fixtures tokenizer`)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn clip() -> &'static TaskTokenizer {
    static TOK: OnceLock<TaskTokenizer> = OnceLock::new();
    TOK.get_or_init(|| TaskTokenizer::clip_default().unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap()
}

/// Runs `check` on every case and reports all mismatches at once.
fn check_all<'a>(
    cases: impl IntoIterator<Item = &'a Value>,
    check: impl Fn(&Value) -> Option<String>,
) -> usize {
    let mut n = 0;
    let failures: Vec<String> = cases
        .into_iter()
        .inspect(|_| n += 1)
        .filter_map(check)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

fn encode_mismatch(tok: &TaskTokenizer, case: &Value) -> Option<String> {
    let text = str_of(&case["text"]);
    let want = ids(&case["ids"]);
    let got = tok.encode(text).unwrap();
    (got != want).then(|| format!("{text:?}: got {got:?}, HF {want:?}"))
}

#[test]
fn clip_vocabulary() {
    let tok = clip();
    assert_eq!(tok.vocab_size(), CLIP_VOCAB_SIZE);
    assert_eq!((tok.bos_id(), tok.eos_id()), (49406, 49407));
    let f = fixture("clip_ids.json");
    assert_eq!(f["vocab_size"].as_u64(), Some(CLIP_VOCAB_SIZE as u64));
    assert_eq!(f["seq_len"].as_u64(), Some(SEQ_LEN as u64));
}

#[test]
fn encode_matches_hf() {
    let f = fixture("clip_ids.json");
    let tok = clip();
    let n = check_all(f["encode"].as_array().unwrap(), |c| encode_mismatch(tok, c));
    assert!(n > 300, "only {n} cases");
}

#[test]
fn padded_matches_processor() {
    let f = fixture("clip_ids.json");
    let tok = clip();
    let n = check_all(f["padded"].as_array().unwrap(), |c| {
        let text = str_of(&c["text"]);
        let len = c["len"].as_u64().unwrap() as usize;
        let want = ids(&c["ids"]);
        let got = tok.encode_padded(text, len).unwrap();
        (got != want).then(|| format!("{text:?} len {len}: got {got:?}, HF {want:?}"))
    });
    assert!(n > 100, "only {n} cases");
}

#[test]
fn end_to_end_matches_processor() {
    let f = fixture("clip_ids.json");
    let tok = clip();
    let dev = Device::Cpu;
    check_all(f["end_to_end"].as_array().unwrap(), |c| {
        let task: Task = str_of(&c["task"]).parse().unwrap();
        let num_text = c["num_text"].as_u64().unwrap() as usize;
        let counts: Vec<(String, usize)> = c["class_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p[0]).to_string(), p[1].as_u64().unwrap() as usize))
            .collect();
        let want_texts: Vec<&str> = c["texts"].as_array().unwrap().iter().map(str_of).collect();
        let texts = text_entries(task, &counts, num_text);
        if texts != want_texts {
            return Some(format!(
                "{task} {counts:?}: texts {texts:?}, HF {want_texts:?}"
            ));
        }

        let ti = tok.task_inputs(task, SEQ_LEN, &dev).unwrap();
        assert_eq!(ti.dtype(), DType::F32);
        assert_eq!(ti.dims(), &[1, SEQ_LEN]);
        let got: Vec<f32> = ti.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = ids(&c["task_inputs"])
            .into_iter()
            .map(|x| x as f32)
            .collect();
        if got != want {
            return Some(format!("{task}: task_inputs {got:?}, HF {want:?}"));
        }

        let xi = tok.text_inputs(&texts, SEQ_LEN, &dev).unwrap();
        assert_eq!(xi.dims(), &[num_text, SEQ_LEN]);
        let got: Vec<Vec<u32>> = xi.to_vec2().unwrap();
        let want: Vec<Vec<u32>> = c["text_inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        (got != want).then(|| format!("{task} {counts:?}: text_inputs differ"))
    });
}

#[test]
fn task_inputs_batch_stacks_tasks() {
    let tok = clip();
    let dev = Device::Cpu;
    let b = tok.task_inputs_batch(&Task::ALL, SEQ_LEN, &dev).unwrap();
    assert_eq!(b.dims(), &[3, SEQ_LEN]);
    for (i, t) in Task::ALL.into_iter().enumerate() {
        let one = tok.task_inputs(t, SEQ_LEN, &dev).unwrap();
        let row: Vec<f32> = b.get(i).unwrap().to_vec1().unwrap();
        assert_eq!(row, one.get(0).unwrap().to_vec1::<f32>().unwrap());
    }
}

#[test]
fn padding_edge_cases() {
    let tok = clip();
    assert_eq!(tok.encode_padded("", 2).unwrap(), [49406, 49407]);
    assert_eq!(
        tok.encode_padded("hello world", 3).unwrap(),
        [49406, 3306, 49407]
    );
    for len in [0, 1] {
        match tok.encode_padded("hello", len) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(">= 2"), "{m}"),
            other => panic!("len {len}: {other:?}"),
        }
    }
    // Exactly full, and one token too many (digits are one token each).
    let full = tok
        .encode_padded(&"7".repeat(SEQ_LEN - 2), SEQ_LEN)
        .unwrap();
    assert_eq!(full.len(), SEQ_LEN);
    assert_eq!(full[SEQ_LEN - 1], 49407);
    assert_eq!(
        full,
        tok.encode_padded(&"7".repeat(SEQ_LEN - 1), SEQ_LEN)
            .unwrap()
    );
}

#[test]
fn task_names() {
    for t in Task::ALL {
        assert_eq!(t.as_str().parse::<Task>().unwrap(), t);
        assert_eq!(t.to_string(), t.as_str());
        assert_eq!(t.prompt(), format!("the task is {}", t.as_str()));
    }
    assert_eq!(" Panoptic ".parse::<Task>().unwrap(), Task::Panoptic);
    let err = "detection".parse::<Task>().unwrap_err().to_string();
    for w in ["detection", "semantic", "instance", "panoptic"] {
        assert!(err.contains(w), "{err}");
    }
}

/// An independent expansion of the BPE file (as OpenAI's SimpleTokenizer does), written as a
/// HF-style vocab.json + merges.txt pair.
fn write_clip_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(BPE_GZ).unwrap());
    let merges: Vec<String> = BufReader::new(gz)
        .lines()
        .skip(1)
        .take(49152 - 256 - 2)
        .map(Result::unwrap)
        .collect();
    let mut bs: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let base: Vec<String> = cs
        .iter()
        .map(|&c| char::from_u32(c).unwrap().to_string())
        .collect();
    let mut tokens = base.clone();
    tokens.extend(base.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    tokens.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab: serde_json::Map<String, Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, Value::from(i)))
        .collect();
    let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&v, serde_json::to_string(&vocab).unwrap()).unwrap();
    let mut f = std::fs::File::create(&m).unwrap();
    writeln!(f, "#version: 0.2").unwrap();
    for line in &merges {
        writeln!(f, "{line}").unwrap();
    }
    (v, m)
}

#[test]
fn from_files_clip_pair_equals_default() {
    let dir = tempfile::tempdir().unwrap();
    let (v, m) = write_clip_pair(dir.path());
    let tok = TaskTokenizer::from_files(&v, &m).unwrap();
    assert_eq!(tok.vocab_size(), CLIP_VOCAB_SIZE);
    let f = fixture("clip_ids.json");
    check_all(f["encode"].as_array().unwrap(), |c| {
        encode_mismatch(&tok, c)
    });
}

#[test]
fn from_files_toy_pair_matches_hf() {
    let f = fixture("toy_ids.json");
    let dir = Path::new(FIXTURES).join("toy");
    let tok = TaskTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap();
    assert_eq!(Some(u64::from(tok.bos_id())), f["bos"].as_u64());
    assert_eq!(Some(u64::from(tok.eos_id())), f["eos"].as_u64());
    assert_ne!(tok.bos_id(), 49406);
    let n = check_all(f["encode"].as_array().unwrap(), |c| {
        encode_mismatch(&tok, c)
    });
    assert!(n >= 40, "only {n} cases");
}

fn err_of(r: Result<TaskTokenizer, Error>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn from_files_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let toy = Path::new(FIXTURES).join("toy");
    let (good_v, good_m) = (toy.join("vocab.json"), toy.join("merges.txt"));
    let missing = dir.path().join("no_such_vocab.json");

    let e = err_of(TaskTokenizer::from_files(&missing, &good_m));
    assert!(e.contains("no_such_vocab.json"), "{e}");
    let missing_m = dir.path().join("no_such_merges.txt");
    let e = err_of(TaskTokenizer::from_files(&good_v, &missing_m));
    assert!(e.contains("no_such_merges.txt"), "{e}");

    for (name, body) in [
        ("broken.json", "{\"a\": 1,"),
        ("list.json", "[1, 2]"),
        ("float.json", "{\"a\": 1.5}"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let e = err_of(TaskTokenizer::from_files(&p, &good_m));
        assert!(e.contains(name), "{e}");
    }

    let bad_m = dir.path().join("bad_merges.txt");
    std::fs::write(&bad_m, "#version: 0.2\nt h\nthree parts here\n").unwrap();
    let e = err_of(TaskTokenizer::from_files(&good_v, &bad_m));
    assert!(e.contains("bad_merges.txt") && e.contains("line 3"), "{e}");

    // A merge whose parts are not in the vocabulary.
    let oov_m = dir.path().join("oov_merges.txt");
    std::fs::write(&oov_m, "#version: 0.2\nt h\nzzzq qqq\n").unwrap();
    let e = err_of(TaskTokenizer::from_files(&good_v, &oov_m));
    assert!(e.contains("oov_merges.txt"), "{e}");

    // A vocabulary without the special tokens.
    let text = std::fs::read_to_string(&good_v).unwrap();
    let mut vocab: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    vocab.remove(EOS_TOKEN);
    let no_eos = dir.path().join("no_eos.json");
    std::fs::write(&no_eos, serde_json::to_string(&vocab).unwrap()).unwrap();
    let e = err_of(TaskTokenizer::from_files(&no_eos, &good_m));
    assert!(e.contains("no_eos.json") && e.contains(EOS_TOKEN), "{e}");
}
