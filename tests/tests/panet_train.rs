//! PANet training pieces (fixture: tests/parity/gen_panet_train.py).
//!
//! - RoIAlign's gradient on CPU: `segkit_core::ops::roi_align` on a `Var` takes the custom op
//!   with a backward pass; its pooled output and input gradient vs torchvision's own
//!   `roi_align(aligned=False)` forward and autograd backward (INDEPENDENT oracle), at full
//!   size: 2 x 256 x 136 x 104 (N2 of a 544x416 batch) with 512 RoIs to 7x7 (sampling ratio 2)
//!   and 2 x 256 x 34 x 26 with 128 RoIs to 14x14 (adaptive sampling), RoIs straddling the
//!   border, tiny and degenerate. Every element enters the comparison (sampled summaries,
//!   tolerance 1e-4 * max(1, max|ref|)).

use candle_core::{Device, Var};
use segkit_core::ops::roi_align;
use segkit_core::testing::synthetic_input;
use segkit_tests::{assert_sampled_close, get, load_fixture};

#[test]
fn roi_align_gradient_matches_torchvision() {
    let f = load_fixture("panet_train/roi_align.safetensors");
    let cases = [
        ("box", (136, 104), 0.25f32, 7, 2),
        ("mask", (34, 26), 0.0625, 14, 0),
    ];
    for (name, (h, w), scale, out, sr) in cases {
        let x = Var::from_tensor(
            &synthetic_input(
                &format!("panet_train.{name}.feat"),
                (2, 256, h, w),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let rois = get(&f, &format!("{name}.rois"));
        let y = roi_align(x.as_tensor(), rois, (out, out), scale, sr, false).unwrap();
        assert_sampled_close(&format!("{name}.pooled"), &y, &f);
        let dy =
            synthetic_input(&format!("panet_train.{name}.dy"), y.dims(), &Device::Cpu).unwrap();
        let grads = (y * dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads
            .get(x.as_tensor())
            .expect("roi_align records a gradient");
        assert_sampled_close(&format!("{name}.grad"), dx, &f);
    }
}
