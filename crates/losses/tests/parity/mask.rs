//! Mask losses, point sampling and importance sampling against `mask.safetensors`.

use candle_core::Tensor;
use segkit_losses::{
    dice_loss, pair_wise_dice_loss, pair_wise_sigmoid_cross_entropy_loss, point_sample,
    sample_points_using_uncertainty, sigmoid_cross_entropy_loss, sigmoid_focal_loss,
    sigmoid_focal_loss_torchvision, Reduction, ReplayPointSource,
};

use crate::common::*;

#[test]
fn mask_losses_match() {
    let f = load("mask.safetensors");
    let labels = get(&f, "masks.labels");
    let n = scalar(&f, "masks.num_masks") as f64;
    type LossFn<'a> = Box<dyn Fn(&Tensor) -> segkit_losses::Result<Tensor> + 'a>;
    let cases: Vec<(&str, LossFn<'_>)> = vec![
        ("dice", Box::new(|x| dice_loss(x, &labels, n))),
        (
            "sigmoid_ce",
            Box::new(|x| sigmoid_cross_entropy_loss(x, &labels, n)),
        ),
        (
            "focal",
            Box::new(|x| sigmoid_focal_loss(x, &labels, n, 0.25, 2.0)),
        ),
        (
            "focal_noalpha_g1_5",
            Box::new(|x| sigmoid_focal_loss(x, &labels, n, -1.0, 1.5)),
        ),
        (
            "tv_focal_mean",
            Box::new(|x| sigmoid_focal_loss_torchvision(x, &labels, 0.25, 2.0, Reduction::Mean)),
        ),
        (
            "tv_focal_sum",
            Box::new(|x| sigmoid_focal_loss_torchvision(x, &labels, 0.25, 2.0, Reduction::Sum)),
        ),
    ];
    for (name, fun) in cases {
        let x = var(&f, "masks.inputs");
        let loss = fun(x.as_tensor()).unwrap();
        let g = loss.backward().unwrap();
        assert_close(
            &format!("mask/{name} loss"),
            &loss,
            &get(&f, &format!("{name}.loss")),
        );
        assert_close(
            &format!("mask/{name} grad"),
            &grad(&g, &x),
            &get(&f, &format!("{name}.grad")),
        );
    }
    let none = sigmoid_focal_loss_torchvision(
        &get(&f, "masks.inputs"),
        &labels,
        0.25,
        2.0,
        Reduction::None,
    )
    .unwrap();
    assert_close(
        "mask/tv_focal_none loss",
        &none,
        &get(&f, "tv_focal_none.loss"),
    );
}

#[test]
fn pair_wise_costs_match() {
    let f = load("mask.safetensors");
    let (x, y) = (get(&f, "pair.inputs"), get(&f, "pair.labels"));
    assert_close(
        "mask/pair dice",
        &pair_wise_dice_loss(&x, &y).unwrap(),
        &get(&f, "pair.dice"),
    );
    assert_close(
        "mask/pair sigmoid_ce",
        &pair_wise_sigmoid_cross_entropy_loss(&x, &y).unwrap(),
        &get(&f, "pair.sigmoid_ce"),
    );
}

#[test]
fn point_sample_matches_grid_sample() {
    let f = load("mask.safetensors");
    for name in ["point_sample", "point_sample_shared"] {
        let x = var(&f, &format!("{name}.input"));
        let out = point_sample(x.as_tensor(), &get(&f, &format!("{name}.coords"))).unwrap();
        assert_close(
            &format!("points/{name} out"),
            &out,
            &get(&f, &format!("{name}.out")),
        );
        let g = out
            .mul(&get(&f, &format!("{name}.upstream")))
            .unwrap()
            .sum_all()
            .unwrap();
        let g = g.backward().unwrap();
        assert_close(
            &format!("points/{name} grad"),
            &grad(&g, &x),
            &get(&f, &format!("{name}.grad")),
        );
    }
}

#[test]
fn importance_sampling_picks_the_same_points() {
    let f = load("mask.safetensors");
    let draws = (0..)
        .map(|i| format!("uncertainty.rand.{i}"))
        .take_while(|k| has(&f, k))
        .map(|k| get(&f, &k))
        .collect();
    let mut src = ReplayPointSource::new(draws);
    let coords =
        sample_points_using_uncertainty(&get(&f, "uncertainty.logits"), 40, 3.0, 0.75, &mut src)
            .unwrap();
    assert_eq!(src.remaining(), 0);
    // The same points; torch.topk's order is sorted by uncertainty, ours too (stable).
    let got = coords.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = get(&f, "uncertainty.coords")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got, want);
}
