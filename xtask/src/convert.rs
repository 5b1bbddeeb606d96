//! `cargo xtask convert IN OUT.safetensors --preset NAME`: turns an mmseg checkpoint (a
//! model-zoo `.pth` with `{meta, state_dict, ..}`, or any checkpoint segkit reads) into a
//! safetensors file, after checking that it loads into the preset strictly (every checkpoint
//! key used — BatchNorm's `num_batches_tracked` aside —, every model weight found with its
//! shape). Keys are kept as they are (mmseg's names are segkit's): the conversion is a format
//! change. Prints a summary (keys, parameters, dtypes, per-prefix counts) and writes the
//! output atomically (a temporary file renamed into place), then reads it back to check it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;
use segkit::core::checkpoint::{is_ignored_key, StateDict};
use segkit::{EncoderDecoder, Preset, SegmentorConfig};

const USAGE: &str = "usage: cargo xtask convert IN.pth OUT.safetensors --preset NAME \
                     (presets: cargo run -p segkit-cli -- dump --list)";

struct Args {
    input: PathBuf,
    output: PathBuf,
    preset: String,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut files = Vec::new();
    let mut preset = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" => preset = Some(it.next().ok_or(USAGE)?.clone()),
            s if s.starts_with("--preset=") => preset = Some(s["--preset=".len()..].to_string()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}; {USAGE}")),
            s => files.push(PathBuf::from(s)),
        }
    }
    let [input, output] = <[PathBuf; 2]>::try_from(files).map_err(|_| USAGE.to_string())?;
    let preset = preset.ok_or_else(|| format!("--preset is required; {USAGE}"))?;
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(format!(
            "the output {} should end in .safetensors",
            output.display()
        ));
    }
    Ok(Args {
        input,
        output,
        preset,
    })
}

fn human(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs `cargo xtask convert`.
pub fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let preset: Preset = a.preset.parse().map_err(|e: segkit::Error| e.to_string())?;
    let cfg: SegmentorConfig = preset.config();
    let sd = StateDict::load(&a.input).map_err(|e| e.to_string())?;
    EncoderDecoder::from_state_dict(&cfg, &sd, &Device::Cpu).map_err(|e| match e {
        // Name the file, not `<state dict>`.
        segkit::Error::Checkpoint { model, source, .. } => {
            format!("{} does not fit `{model}`: {source}", a.input.display())
        }
        e => e.to_string(),
    })?;

    let mut params = 0usize;
    let mut bytes = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut prefixes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (k, t) in sd.iter() {
        let n = t.elem_count();
        bytes += n * t.dtype().size_in_bytes();
        *dtypes.entry(format!("{:?}", t.dtype())).or_default() += 1;
        let top = k.split('.').next().unwrap_or(k).to_string();
        let e = prefixes.entry(top).or_default();
        e.0 += 1;
        if !is_ignored_key(k) {
            params += n;
            e.1 += n;
        }
    }
    println!("{} -> {}", a.input.display(), a.output.display());
    println!(
        "preset {}: loads strictly ({} classes)",
        preset,
        cfg.num_classes()
    );
    println!(
        "{} keys, {} parameters ({:.2} M), {}",
        sd.len(),
        params,
        params as f64 / 1e6,
        human(bytes)
    );
    let dt: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
    println!("dtypes: {}", dt.join(", "));
    for (p, (keys, n)) in &prefixes {
        println!("  {p:<16} {keys:>5} keys {n:>12} parameters");
    }

    sd.save_safetensors(&a.output).map_err(|e| e.to_string())?;
    let back = StateDict::load(&a.output).map_err(|e| e.to_string())?;
    let same = back.len() == sd.len()
        && sd.iter().all(|(k, t)| {
            back.get(k)
                .is_some_and(|b| b.dims() == t.dims() && b.dtype() == t.dtype())
        });
    if !same {
        return Err(format!(
            "{} does not read back with the same keys, shapes and dtypes",
            a.output.display()
        ));
    }
    println!(
        "wrote {} (read back: same keys, shapes and dtypes)",
        a.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        let a = parse(&s(&[
            "a.pth",
            "b.safetensors",
            "--preset",
            "pspnet_r50-d8_ade20k-512x512",
        ]))
        .unwrap();
        assert_eq!(a.input, PathBuf::from("a.pth"));
        assert_eq!(a.preset, "pspnet_r50-d8_ade20k-512x512");
        assert!(parse(&s(&["a.pth", "b.safetensors"])).is_err());
        assert!(parse(&s(&["a.pth", "b.bin", "--preset", "x"])).is_err());
        assert!(parse(&s(&["a.pth", "--preset", "x"])).is_err());
    }

    #[test]
    fn unknown_preset_lists_valid_ones() {
        let e = run(&s(&["a.pth", "b.safetensors", "--preset", "pspnet"])).unwrap_err();
        assert!(e.contains("pspnet_r50-d8_ade20k-512x512"), "{e}");
    }
}
