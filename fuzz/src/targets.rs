//! The fuzz targets: what each feeds its input to, and how its inputs are mutated.

use std::path::Path;

use candle_core::DType;
use segkit::core::checkpoint::{LoadOptions, StateDict};
use segkit::data::image;
use segkit::models::ModelConfig;
use segkit::segmenter::registry::Registry;
use segkit::train::TrainConfig;

use crate::mutate::{self, Rng};

/// A mutator: (rng, a corpus input, another corpus input) -> a new input.
type Mutator = fn(&mut Rng, &[u8], &[u8]) -> Vec<u8>;

/// One fuzz target.
pub struct Target {
    /// Its name on the command line and its corpus folder (`fuzz/corpus/<name>`).
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    pub mutate: Mutator,
    /// Runs one input, written at `file`; `true` when the parser accepted it (it then joins
    /// the corpus). Any `Err` is fine: only a panic, an abort, a hang or exhausted memory is
    /// a failure.
    pub run: fn(&Path, &[u8]) -> bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "pth_zip",
        about: "PyTorch zip checkpoints (StateDict::load): zip container, pickle, tensor views",
        mutate: mutate::zip_checkpoint,
        run: checkpoint,
    },
    Target {
        name: "pth_legacy",
        about: "PyTorch legacy checkpoints (StateDict::load): five pickles, raw storages",
        mutate: mutate::bytes,
        run: checkpoint,
    },
    Target {
        name: "safetensors",
        about: "safetensors files (StateDict::load): header length, JSON header, offsets",
        mutate: mutate::safetensors,
        run: checkpoint,
    },
    Target {
        name: "image",
        about: "image decoding (segkit_data::image::decode, to_rgb8, resize_rgb8): PNG, JPEG",
        mutate: mutate::image,
        run: decode_image,
    },
    Target {
        name: "model_config",
        about: "model config.json (segkit_models::ModelConfig::from_json)",
        mutate: mutate::bytes,
        run: model_config,
    },
    Target {
        name: "train_config",
        about: "training config (segkit_train::TrainConfig::from_json, segmentor_config)",
        mutate: mutate::bytes,
        run: train_config,
    },
    Target {
        name: "registry",
        about: "weights/registry.toml (segkit::segmenter::registry::Registry::parse)",
        mutate: mutate::bytes,
        run: registry,
    },
];

/// Loads a checkpoint file; when it loads, every tensor is also read as f32 and summed, and
/// the state dict is looked for under its usual wrapper keys.
fn checkpoint(file: &Path, _: &[u8]) -> bool {
    let Ok(sd) = StateDict::load(file) else {
        return false;
    };
    for (_, t) in sd.iter() {
        let _ = t.to_dtype(DType::F32).and_then(|t| t.sum_all());
    }
    for key in ["state_dict", "model"] {
        let opts = LoadOptions {
            key: Some(key),
            ..Default::default()
        };
        let _ = StateDict::load_with(file, &opts);
    }
    true
}

fn decode_image(_: &Path, input: &[u8]) -> bool {
    let Ok(img) = image::decode(input) else {
        return false;
    };
    if let Ok(rgb) = image::to_rgb8(&img) {
        let _ = image::resize_rgb8(&rgb, 17, 9);
    }
    true
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

fn model_config(_: &Path, input: &[u8]) -> bool {
    match ModelConfig::from_json(&text(input)) {
        Ok(cfg) => {
            let _ = cfg.name();
            true
        }
        Err(_) => false,
    }
}

fn train_config(_: &Path, input: &[u8]) -> bool {
    match TrainConfig::from_json(&text(input)) {
        Ok(cfg) => {
            let _ = cfg.segmentor_config();
            true
        }
        Err(_) => false,
    }
}

fn registry(_: &Path, input: &[u8]) -> bool {
    Registry::parse(&text(input), Path::new("registry.toml")).is_ok()
}

/// Not fuzzing: checks that the supervisor catches each kind of failure. From the 200th input
/// on, it fails the way `SEGKIT_FUZZ_SELFTEST` says: `panic`, `abort`, `overflow` (unbounded
/// recursion), `hang` or `memory`. Its seed is built in.
pub const SELFTEST: Target = Target {
    name: "selftest",
    about: "the supervisor's own check (SEGKIT_FUZZ_SELFTEST=panic|abort|overflow|hang|memory)",
    mutate: mutate::bytes,
    run: selftest,
};

fn selftest(_: &Path, input: &[u8]) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    if N.fetch_add(1, Ordering::Relaxed) < 200 {
        return false;
    }
    fn deep(n: u64, pad: [u8; 256]) -> u64 {
        if std::hint::black_box(n) == u64::MAX {
            return n;
        }
        deep(n + 1, std::hint::black_box(pad)) + 1
    }
    match std::env::var("SEGKIT_FUZZ_SELFTEST").as_deref() {
        Ok("panic") => panic!("selftest panic on a {}-byte input", input.len()),
        Ok("abort") => std::process::abort(),
        Ok("overflow") => deep(0, [0; 256]) > 0,
        Ok("hang") => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        Ok("memory") => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1u8; 64 << 20]);
            }
        }
        _ => false,
    }
}

pub fn by_name(name: &str) -> Option<&'static Target> {
    TARGETS
        .iter()
        .chain(std::iter::once(&SELFTEST))
        .find(|t| t.name == name)
}
