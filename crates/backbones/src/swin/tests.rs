//! Unit tests of the Swin key styles: mmseg's index buffer, patch-merging order, output
//! selection and optional norms. Reading an mmseg backbone dict from JSON and numerical parity
//! with both references are tested in tests/tests/compose_parity.rs (mmseg) and
//! tests/tests/swin_parity.rs (HF).

use candle_core::{DType, Device, Tensor};

use super::patch::{merge_neighbourhoods, MergeOrder};
use super::window::relative_position_index;
use super::{SwinConfig, SwinKeyStyle};

/// mmseg's `WindowMSA` index: `double_step_seq(2W - 1, W, 1, W)`, `coords + coords.T`,
/// `flip(1)`, written out as its Python.
fn mmseg_relative_position_index(w: usize) -> Vec<u32> {
    let n = w * w;
    let coords: Vec<usize> = (0..w)
        .flat_map(|r| (0..w).map(move |c| r * (2 * w - 1) + c))
        .collect();
    (0..n)
        .flat_map(|i| {
            let coords = &coords;
            (0..n).map(move |j| (coords[i] + coords[n - 1 - j]) as u32)
        })
        .collect()
}

#[test]
fn mmseg_relative_position_index_is_hf_index() {
    for w in [1, 2, 7, 12] {
        assert_eq!(
            mmseg_relative_position_index(w),
            relative_position_index(w),
            "window {w}"
        );
    }
}

/// `x` of an `h x w` map as tokens, value `1000 * row + 10 * col + channel`.
fn labelled_tokens(h: usize, w: usize, c: usize) -> Tensor {
    let v: Vec<f32> = (0..h * w * c)
        .map(|i| {
            let (p, ch) = (i / c, i % c);
            (1000 * (p / w) + 10 * (p % w) + ch) as f32
        })
        .collect();
    Tensor::from_vec(v, (1, h * w, c), &Device::Cpu).unwrap()
}

#[test]
fn merge_orders_match_hf_concat_and_nn_unfold() {
    let (h, w, c) = (3, 5, 2);
    let x = labelled_tokens(h, w, c);
    // The value of channel `ch` at pixel (row, col) of the zero-padded map.
    let at = |row: usize, col: usize, ch: usize| -> f32 {
        if row < h && col < w {
            (1000 * row + 10 * col + ch) as f32
        } else {
            0.0
        }
    };
    let hf = merge_neighbourhoods(&x, (h, w), MergeOrder::Concat).unwrap();
    let unfold = merge_neighbourhoods(&x, (h, w), MergeOrder::Unfold).unwrap();
    assert_eq!(hf.dims(), &[1, 2 * 3, 4 * c]);
    let hf = hf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let unfold = unfold.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (t, (i, j)) in (0..2).flat_map(|i| (0..3).map(move |j| (i, j))).enumerate() {
        for dy in 0..2 {
            for dx in 0..2 {
                for ch in 0..c {
                    let want = at(2 * i + dy, 2 * j + dx, ch);
                    // HF: torch.cat([x0, x1, x2, x3]) with x1 = x[:, 1::2, 0::2] (row offset).
                    assert_eq!(hf[t * 4 * c + (2 * dx + dy) * c + ch], want);
                    // nn.Unfold(2, stride=2): channel-major, then kernel row, kernel column.
                    assert_eq!(unfold[t * 4 * c + 4 * ch + 2 * dy + dx], want);
                }
            }
        }
    }
}

#[test]
fn out_indices_follow_the_key_style() {
    let hf = SwinConfig {
        out_features: None,
        out_indices: Some(vec![0, 2]),
        ..SwinConfig::tiny()
    };
    assert_eq!(hf.out_stage_indices().unwrap(), [0, 2]); // stem, stage2
    let mm = SwinConfig {
        key_style: SwinKeyStyle::Mmseg,
        ..hf.clone()
    };
    assert_eq!(mm.out_stage_indices().unwrap(), [1, 3]); // stage1, stage3

    // Defaults without a selection: HF's last stage, mmseg's every stage.
    let none = |k| SwinConfig {
        key_style: k,
        out_features: None,
        out_indices: None,
        ..SwinConfig::tiny()
    };
    assert_eq!(none(SwinKeyStyle::Hf).out_stage_indices().unwrap(), [4]);
    assert_eq!(
        none(SwinKeyStyle::Mmseg).out_stage_indices().unwrap(),
        [1, 2, 3, 4]
    );
    // out_features (HF names) work in both styles, but mmseg has no stem output.
    let mm_names = SwinConfig::mmseg_tiny().with_out_features(["stage2", "stage4"]);
    assert_eq!(mm_names.out_stage_indices().unwrap(), [2, 4]);
    let e = SwinConfig::mmseg_tiny()
        .with_out_features(["stem", "stage1"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("stem"), "{e}");
    let e = SwinConfig {
        out_indices: Some(vec![1, 4]),
        ..SwinConfig::mmseg_tiny()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("out index 4") && e.contains("0..4"), "{e}");
}

#[test]
fn qk_scale_and_patch_norm() {
    let cfg = SwinConfig::mmseg_tiny();
    assert!((cfg.attention_scale(96, 3) - 32f64.powf(-0.5)).abs() < 1e-15);
    let cfg = SwinConfig {
        qk_scale: Some(0.25),
        ..cfg
    };
    assert_eq!(cfg.attention_scale(96, 3), 0.25);
    let bad = SwinConfig {
        qk_scale: Some(0.0),
        ..cfg
    };
    assert!(bad.validate().is_err());
    // Without patch_norm there are no `patch_embed.norm` / `downsample.norm` weights.
    let small = SwinConfig {
        depths: vec![1, 1],
        num_heads: vec![1, 2],
        embed_dim: 8,
        window_size: 2,
        patch_norm: false,
        out_indices: None,
        ..SwinConfig::mmseg_tiny()
    };
    let mut weights = std::collections::HashMap::new();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let net = super::Swin::new(&small, vb).unwrap();
    let x = Tensor::zeros((1, 3, 9, 7), DType::F32, &Device::Cpu).unwrap();
    let out = net.forward(&x, false).unwrap();
    assert_eq!(out.feature_maps[1].dims(), &[1, 16, 2, 1]);
    // Strict: a map without the norms builds, proving they are not looked up.
    let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    for (k, s) in [
        ("patch_embed.projection.weight", vec![8, 3, 4, 4]),
        ("patch_embed.projection.bias", vec![8]),
        ("stages.0.downsample.reduction.weight", vec![16, 32]),
        ("norm0.weight", vec![8]),
        ("norm0.bias", vec![8]),
        ("norm1.weight", vec![16]),
        ("norm1.bias", vec![16]),
    ] {
        weights.insert(k.to_string(), zeros(&s));
    }
    for (i, dim) in [(0usize, 8usize), (1, 16)] {
        let p = format!("stages.{i}.blocks.0");
        let heads = dim / 8;
        for (k, s) in [
            ("norm1.weight", vec![dim]),
            ("norm1.bias", vec![dim]),
            ("norm2.weight", vec![dim]),
            ("norm2.bias", vec![dim]),
            ("attn.w_msa.qkv.weight", vec![3 * dim, dim]),
            ("attn.w_msa.qkv.bias", vec![3 * dim]),
            ("attn.w_msa.proj.weight", vec![dim, dim]),
            ("attn.w_msa.proj.bias", vec![dim]),
            ("attn.w_msa.relative_position_bias_table", vec![9, heads]),
            ("ffn.layers.0.0.weight", vec![4 * dim, dim]),
            ("ffn.layers.0.0.bias", vec![4 * dim]),
            ("ffn.layers.1.weight", vec![dim, 4 * dim]),
            ("ffn.layers.1.bias", vec![dim]),
        ] {
            weights.insert(format!("{p}.{k}"), zeros(&s));
        }
    }
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    super::Swin::new(&small, vb).unwrap();
}

/// Inference after the variables changed (a model being trained, evaluated in between) sees
/// the new weights: the attention parameters are not cached for variables.
#[test]
fn inference_sees_updated_variables() {
    let small = SwinConfig {
        depths: vec![1, 1],
        num_heads: vec![1, 2],
        embed_dim: 8,
        window_size: 2,
        out_indices: None,
        ..SwinConfig::mmseg_tiny()
    };
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    let net = super::Swin::new(
        &small,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 9, 7), &dev).unwrap();
    let before = net.forward(&x, false).unwrap().feature_maps[1].clone();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("relative_position_bias_table") {
            // Not a constant shift: softmax would not see one.
            let t = var.as_tensor();
            var.set(&(t + t.randn_like(0.0, 1.0).unwrap()).unwrap())
                .unwrap();
        }
    }
    let after = net.forward(&x, false).unwrap().feature_maps[1].clone();
    // A fresh model from the updated variables is what inference must give.
    let fresh = super::Swin::new(
        &small,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .unwrap()
    .forward(&x, false)
    .unwrap()
    .feature_maps[1]
        .clone();
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(&before, &after) > 1e-4, "the update changed nothing");
    assert_eq!(diff(&after, &fresh), 0.0);
}

/// Inference mode on an input that records gradients (SmoothGrad, `segkit pssl generate` on a
/// Swin classifier) takes the differentiable path: the fused CPU epilogues record no gradient.
/// Without dropout or drop path, the input gradient in inference mode equals training mode's.
#[test]
fn inference_on_a_tracked_input_is_differentiable() {
    let small = SwinConfig {
        depths: vec![1, 1],
        num_heads: vec![1, 2],
        embed_dim: 8,
        window_size: 2,
        out_indices: None,
        drop_path_rate: 0.0,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..SwinConfig::mmseg_tiny()
    };
    let dev = Device::Cpu;
    // Plain (non-variable) weights, as a loaded checkpoint: only the input records gradients.
    let varmap = candle_nn::VarMap::new();
    super::Swin::new(
        &small,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .unwrap();
    let weights: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &dev);
    let net = super::Swin::new(&small, vb).unwrap();
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 9, 7), &dev).unwrap())
        .unwrap();
    let grad = |train: bool| {
        let out = net.forward(x.as_tensor(), train).unwrap().feature_maps[1].clone();
        let g = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor())
            .expect("no gradient reached the input")
            .clone()
    };
    let (inf, tr) = (grad(false), grad(true));
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(max(&inf) > 0.0);
    let diff = max(&(&inf - &tr).unwrap());
    assert!(
        diff <= 1e-5 * max(&tr).max(1.0),
        "inference vs train gradient differ by {diff}"
    );
}
