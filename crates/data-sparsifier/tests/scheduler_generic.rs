//! Scheduler behaviour that does not depend on a particular sparsifier: schedules, clamping,
//! errors, the ordering warning, state save/load. Uses a small magnitude sparsifier defined here.

use data_sparsifier::scheduler::{
    DataScheduler, Lambda, LinearSchedule, Param, Point, Schedule, SchedulerWarning, StepOutcome,
    StepSchedule, ZhuGupta,
};
use data_sparsifier::{
    AddOptions, Config, DType, DataSparsifier, Error, LoadOptions, Mask, Tensor, TensorView,
    UpdateMask,
};
use serde::{Deserialize, Serialize};

/// Zeroes the `round(level · n)` smallest-magnitude elements.
struct Magnitude;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Level {
    level: f64,
}
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LevelPatch {
    level: Option<f64>,
}
impl Config for Level {
    type Patch = LevelPatch;
    fn apply(&mut self, p: &LevelPatch) {
        if let Some(l) = p.level {
            self.level = l;
        }
    }
}

impl UpdateMask for Magnitude {
    type Config = Level;
    type State = ();
    fn validate(&self, name: &str, c: &Level) -> data_sparsifier::Result<()> {
        if !(0.0..=1.0).contains(&c.level) {
            return Err(Error::invalid_config(name, "level", c.level, "in [0, 1]"));
        }
        Ok(())
    }
    fn update_mask(
        &self,
        _name: &str,
        data: TensorView<'_>,
        c: &Level,
        _s: &mut (),
        mask: &mut Mask,
    ) -> data_sparsifier::Result<()> {
        let v = data.to_tensor().to_f64_vec();
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()));
        let k = (c.level * v.len() as f64).round() as usize;
        mask.fill(true);
        for &i in &idx[..k] {
            mask.set(i, false);
        }
        Ok(())
    }
}

const LEVEL: Param<Level> =
    Param::<Level>::new("level", |c| c.level, |c, v| c.level = v).with_range(0.0, 1.0);

fn sparsifier() -> DataSparsifier<Magnitude> {
    let mut sp = DataSparsifier::new(Magnitude, Level { level: 0.2 }).unwrap();
    let t = |n: usize, seed| data_sparsifier::random::randn([n, n], DType::F32, seed);
    sp.add_data("a", t(4, 1)).unwrap();
    sp.add_data_with(
        "b",
        t(6, 2),
        AddOptions::patched(LevelPatch { level: Some(0.4) }),
    )
    .unwrap();
    sp
}

fn levels(sp: &DataSparsifier<Magnitude>) -> Vec<f64> {
    sp.configs().map(|(_, c)| c.level).collect()
}

#[test]
fn construction_reads_base_values_and_steps_once() {
    let mut sp = sparsifier();
    let s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    assert_eq!(s.last_epoch(), 0);
    assert_eq!(s.step_count(), 1);
    assert_eq!(s.base_value("a"), Some(0.2));
    assert_eq!(s.base_value("b"), Some(0.4));
    assert_eq!(s.last_values(), &[("a".into(), 0.2), ("b".into(), 0.4)]);
    assert_eq!(s.schedule().gamma, 2.0);
    assert_eq!(s.schedule().step_size, 1);
    assert!(s.to_string().contains("level: {\"a\": 0.2, \"b\": 0.4}"));
}

#[test]
fn step_writes_configs_masks_change_on_next_sparsifier_step() {
    let mut sp = sparsifier();
    sp.step().unwrap();
    let m0 = sp.get_mask("a").unwrap().clone();
    assert_eq!(m0.count_zeroed(), 3); // round(0.2 * 16)
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    let _ = s.step(&mut sp).unwrap();
    assert_eq!(levels(&sp), vec![0.4, 0.8]);
    // The masks have not changed yet...
    assert_eq!(sp.get_mask("a").unwrap(), &m0);
    // ...until the sparsifier steps.
    sp.step().unwrap();
    assert_eq!(sp.get_mask("a").unwrap().count_zeroed(), 6);
}

#[test]
fn step_re_enables_mask_updates() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    sp.set_mask_update_enabled(false);
    sp.step().unwrap();
    let _ = s.step(&mut sp).unwrap();
    assert!(sp.mask_update_enabled());
}

#[test]
fn overshooting_levels_clamp_to_the_range() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 3.0).unwrap()).unwrap();
    for _ in 0..4 {
        sp.step().unwrap();
        let _ = s.step(&mut sp).unwrap();
    }
    assert_eq!(levels(&sp), vec![1.0, 1.0]);
    sp.step().unwrap(); // a level of 1 is valid: everything is pruned
    assert_eq!(sp.get_mask("b").unwrap().count_kept(), 0);

    let mut sp = sparsifier();
    let _s = DataScheduler::new(&mut sp, LEVEL, Lambda::new(|e| -(e as f64))).unwrap();
    assert_eq!(levels(&sp), vec![0.0, 0.0]); // base * -0 = -0.0 -> clamped up to 0
}

#[test]
fn non_finite_values_are_errors_and_change_nothing() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut sp = sparsifier();
        let mut s = DataScheduler::new(
            &mut sp,
            LEVEL,
            Lambda::new(move |e| if e == 2 { bad } else { 1.0 }),
        )
        .unwrap();
        sp.step().unwrap();
        let _ = s.step(&mut sp).unwrap();
        let before = (levels(&sp), s.state_dict());
        let err = s.step(&mut sp).unwrap_err();
        let Error::InvalidConfig {
            name, key, value, ..
        } = &err
        else {
            panic!("{err}");
        };
        // The data, the value, and the fix are named.
        assert_eq!((name.as_str(), *key), ("a", "level"));
        assert_eq!(value, &bad.to_string());
        let msg = err.to_string();
        assert!(msg.contains("finite") && msg.contains("epoch 2"), "{msg}");
        // Nothing changed (clamping would have turned ±inf into 1 or 0).
        assert_eq!((levels(&sp), s.state_dict()), before);
        // What is there still saves and loads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        s.save_state(&sp, &path).unwrap();
        s.load_state(&mut sp, &path, LoadOptions::default())
            .unwrap();
        assert_eq!(s.state_dict(), before.1);
    }
}

#[test]
fn non_finite_base_values_are_refused() {
    // A parameter whose value is infinite for a level of 0.
    const INVERSE: Param<Level> =
        Param::<Level>::new("inverse", |c| 1.0 / c.level, |c, v| c.level = 1.0 / v);
    let mut sp = sparsifier();
    sp.add_data_with(
        "zero",
        Tensor::zeros(DType::F32, [2, 2]),
        AddOptions::patched(LevelPatch { level: Some(0.0) }),
    )
    .unwrap();
    let err = DataScheduler::new(&mut sp, INVERSE, StepSchedule::new(1, 1.0).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { name, key: "inverse", .. } if name == "zero"),
        "{err}"
    );
    assert_eq!(sp.config("zero").unwrap().level, 0.0);
}

#[test]
fn state_that_json_cannot_hold_is_an_error_not_a_file_that_fails_to_load() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    // JSON would write the infinite gamma as null, and the file would not load.
    s.schedule_mut().gamma = f64::INFINITY;
    assert!(matches!(
        s.to_json(),
        Err(Error::InvalidConfig { key: "gamma", .. })
    ));
    let mut extra = std::collections::BTreeMap::new();
    assert!(s.save_into(&mut extra).is_err());
    assert!(extra.is_empty());
    assert!(s.save_state(&sp, &path).is_err());
    assert!(!path.exists());

    s.schedule_mut().gamma = 2.0;
    let json = s.to_json().unwrap();
    assert_eq!(json["schedule_state"]["gamma"], 2.0);
    s.save_state(&sp, &path).unwrap();
    let mut sp2 = sparsifier();
    let mut s2 = DataScheduler::new(&mut sp2, LEVEL, StepSchedule::new(3, 1.0).unwrap()).unwrap();
    s2.load_state(&mut sp2, &path, LoadOptions::default())
        .unwrap();
    assert_eq!(s2.state_dict(), s.state_dict());
}

#[test]
fn removed_name_is_an_error() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 1.0).unwrap()).unwrap();
    sp.remove_data("b").unwrap();
    assert!(matches!(s.step(&mut sp), Err(Error::UnknownName { .. })));
}

#[test]
fn data_added_later_is_not_scheduled() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    sp.add_data("late", Tensor::zeros(DType::F32, [2, 2]))
        .unwrap();
    for epoch in 1..=3 {
        sp.step().unwrap();
        let _ = s.step(&mut sp).unwrap();
        assert_eq!(sp.config("late").unwrap().level, 0.2, "epoch {epoch}");
        assert_eq!(s.last_value("late"), Some(0.2));
        assert_eq!(s.base_value("late"), None);
    }
    // ...while the entries that existed are scheduled: 0.2 · 2³ and 0.4 · 2³, clamped.
    assert_eq!(levels(&sp), vec![1.0, 1.0, 0.2]);
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    sp.add_data("late", Tensor::zeros(DType::F32, [2, 2]))
        .unwrap();
    sp.step().unwrap();
    let _ = s.step(&mut sp).unwrap();
    assert_eq!(levels(&sp), vec![0.4, 0.8, 0.2]);
}

#[test]
fn ordering_warning() {
    let mut sp = sparsifier();
    sp.step().unwrap(); // a step before the scheduler exists does not count
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 1.0).unwrap()).unwrap();
    let out = s.step(&mut sp).unwrap();
    assert_eq!(
        out,
        StepOutcome::Warned(SchedulerWarning::SteppedBeforeSparsifier)
    );
    assert!(out.warning().unwrap().to_string().contains("BEFORE"));
    // Only the first user step is checked.
    assert_eq!(s.step(&mut sp).unwrap(), StepOutcome::Stepped);

    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 1.0).unwrap()).unwrap();
    sp.step().unwrap();
    assert_eq!(s.step(&mut sp).unwrap().warning(), None);
}

#[test]
fn invalid_schedules_are_rejected() {
    assert!(StepSchedule::new(0, 0.5).is_err());
    assert!(StepSchedule::new(1, f64::INFINITY).is_err());
    assert!(ZhuGupta::new(None, 0.9, 0, 10, 0).is_err());
    assert!(ZhuGupta::new(Some(f64::NAN), 0.9, 0, 10, 1).is_err());
    let mut sp = sparsifier();
    let bad = StepSchedule {
        step_size: 0,
        gamma: 1.0,
    };
    assert!(DataScheduler::new(&mut sp, LEVEL, bad).is_err());
}

fn point(epoch: u64) -> Point<'static> {
    Point {
        name: "x",
        epoch,
        base: 0.5,
        current: 0.25,
    }
}

#[test]
fn zero_step_size_or_frequency_gives_nan_not_a_panic() {
    // The fields are public, so a schedule validate() refuses can still be built and asked.
    let step = StepSchedule {
        step_size: 0,
        gamma: 2.0,
    };
    assert!(step.validate().is_err());
    for e in [0, 1, 2, 7, u64::MAX] {
        assert!(step.value(&point(e)).is_nan(), "epoch {e}");
    }
    let zg = ZhuGupta {
        frequency: 0,
        ..ZhuGupta::new(Some(0.1), 0.9, 2, 4, 1).unwrap()
    };
    assert!(zg.validate().is_err());
    assert_eq!(zg.value(&point(1)), 0.1); // before the start no division happens
    for e in [2, 3, 6, 100, u64::MAX] {
        assert!(zg.value(&point(e)).is_nan(), "epoch {e}");
    }
}

#[test]
fn step_revalidates_a_schedule_changed_through_schedule_mut() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    sp.step().unwrap();
    let _ = s.step(&mut sp).unwrap();
    let before = (levels(&sp), s.state_dict());
    assert_eq!(before.0, vec![0.4, 0.8]);

    s.schedule_mut().step_size = 0;
    sp.step().unwrap();
    let err = s.step(&mut sp).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                key: "step_size",
                ..
            }
        ),
        "{err}"
    );
    let mut after = s.state_dict();
    after.schedule_state = before.1.schedule_state.clone(); // the bad step_size itself differs
    assert_eq!((levels(&sp), after), before);

    s.schedule_mut().gamma = f64::INFINITY;
    s.schedule_mut().step_size = 1;
    assert!(matches!(
        s.step(&mut sp),
        Err(Error::InvalidConfig { key: "gamma", .. })
    ));
    assert_eq!(levels(&sp), before.0);

    // Fixed, it steps again.
    s.schedule_mut().gamma = 0.5;
    let _ = s.step(&mut sp).unwrap();
    assert_eq!(levels(&sp), vec![0.2, 0.4]);
    assert_eq!(s.last_epoch(), 2);

    // The same for Zhu & Gupta's frequency.
    let mut sp = sparsifier();
    let zg = ZhuGupta::new(Some(0.0), 0.5, 0, 2, 1).unwrap();
    let mut s = DataScheduler::new(&mut sp, LEVEL, zg).unwrap();
    s.schedule_mut().frequency = 0;
    sp.step().unwrap();
    assert!(matches!(
        s.step(&mut sp),
        Err(Error::InvalidConfig {
            key: "frequency",
            ..
        })
    ));
    assert_eq!(levels(&sp), vec![0.0, 0.0]);
    assert_eq!((s.last_epoch(), s.step_count()), (0, 1));
}

#[test]
fn zhu_gupta_follows_the_paper() {
    // s_i = 0.25, s_f = 0.75, t0 = 3, n = 4 pruning steps, Δt = 3: the ramp ends at 3 + 4·3 = 15.
    // s_t = s_f + (s_i − s_f)(1 − k/n)³ with k = ⌊(t − t0)/Δt⌋, by hand:
    //   k = 1: 0.75 − 0.5 · (3/4)³ = 0.75 − 0.5 · 27/64 = 0.5390625
    //   k = 2: 0.75 − 0.5 · (1/2)³ = 0.75 − 0.0625     = 0.6875
    //   k = 3: 0.75 − 0.5 · (1/4)³ = 0.75 − 0.0078125  = 0.7421875
    // (every value is exact in binary, so the comparison is exact).
    let s = ZhuGupta::new(Some(0.25), 0.75, 3, 4, 3).unwrap();
    assert_eq!(s.end_step(), Some(15));
    let v: Vec<f64> = (0..20).map(|e| s.value(&point(e))).collect();
    #[rustfmt::skip]
    let want = [
        0.25, 0.25, 0.25,            // t < t0
        0.25, 0.25, 0.25,            // t0 .. t0+Δt: k = 0, still s_i
        0.5390625, 0.5390625, 0.5390625,
        0.6875, 0.6875, 0.6875,
        0.7421875, 0.7421875, 0.7421875,
        0.75, 0.75, 0.75, 0.75, 0.75, // from t0 + nΔt = 15 on: s_f exactly
    ];
    assert_eq!(v, want);
    // The level changes only at t0 + kΔt.
    let changes: Vec<u64> = (1..20)
        .filter(|&e| v[e as usize] != v[e as usize - 1])
        .collect();
    assert_eq!(changes, vec![6, 9, 12, 15]);
    // Far past the end, including where t0 + nΔt arithmetic would overflow.
    assert_eq!(s.value(&point(u64::MAX)), 0.75);

    // Δt = 1 updates every step; n = 0 jumps to s_f at t0.
    let s = ZhuGupta::new(Some(0.0), 1.0, 0, 2, 1).unwrap();
    let v: Vec<f64> = (0..4).map(|e| s.value(&point(e))).collect();
    assert_eq!(v, vec![0.0, 0.875, 1.0, 1.0]); // 1 − (1/2)³ = 0.875
    let s = ZhuGupta::new(Some(0.1), 0.6, 5, 0, 7).unwrap();
    assert_eq!(s.value(&point(4)), 0.1);
    assert_eq!(s.value(&point(5)), 0.6);

    // initial = None uses each entry's base value (0.5 in `point`).
    let s = ZhuGupta::new(None, 0.9, 0, 10, 1).unwrap();
    assert_eq!(s.value(&point(0)), 0.5);
    // 0.9 + (0.5 − 0.9)(1 − 1/10)³ = 0.9 − 0.4 · 0.729 = 0.6084
    assert!((s.value(&point(1)) - 0.6084).abs() < 1e-12);

    // A ramp end past u64::MAX is refused.
    assert!(ZhuGupta::new(None, 0.9, 1, u64::MAX / 2 + 1, 2).is_err());
    assert!(ZhuGupta::new(None, 0.9, u64::MAX - 4, 2, 2).is_ok());
}

#[test]
fn zhu_gupta_drives_a_sparsifier_to_the_final_level() {
    let mut sp = sparsifier();
    let mut s = DataScheduler::new(
        &mut sp,
        LEVEL,
        // t0 = 1, n = 2 pruning steps every Δt = 2 steps: s_f at 1 + 2·2 = 5.
        ZhuGupta::new(Some(0.0), 0.75, 1, 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(levels(&sp), vec![0.0, 0.0]);
    let mut seen = vec![];
    for _ in 0..6 {
        sp.step().unwrap();
        let _ = s.step(&mut sp).unwrap();
        seen.push(levels(&sp));
    }
    // k = 1 (epochs 3, 4): 0.75 · (1 − (1/2)³) = 0.65625
    let want = [0.0, 0.0, 0.65625, 0.65625, 0.75, 0.75];
    assert_eq!(seen, want.map(|l| vec![l, l]));
    sp.step().unwrap();
    assert_eq!(sp.get_mask("a").unwrap().count_zeroed(), 12);
}

#[test]
fn linear_schedule_through_the_scheduler() {
    let mut sp = sparsifier();
    let lin = LinearSchedule {
        start_value: None,
        end_value: 0.6,
        start_epoch: 0,
        num_epochs: 2,
    };
    let mut s = DataScheduler::new(&mut sp, LEVEL, lin).unwrap();
    sp.step().unwrap();
    let _ = s.step(&mut sp).unwrap();
    let l = levels(&sp);
    assert!((l[0] - 0.4).abs() < 1e-12 && (l[1] - 0.5).abs() < 1e-12);
    let _ = s.step(&mut sp).unwrap();
    assert_eq!(levels(&sp), vec![0.6, 0.6]);
}

#[test]
fn custom_schedule_trait_object() {
    struct Halve;
    impl Schedule for Halve {
        fn name(&self) -> &'static str {
            "halve"
        }
        fn value(&self, at: &Point<'_>) -> f64 {
            if at.epoch > 0 {
                at.current * 0.5
            } else {
                at.base
            }
        }
    }
    let mut sp = sparsifier();
    let boxed: Box<dyn Schedule> = Box::new(Halve);
    let mut s = DataScheduler::new(&mut sp, LEVEL, boxed).unwrap();
    sp.step().unwrap();
    let _ = s.step(&mut sp).unwrap();
    assert_eq!(levels(&sp), vec![0.1, 0.2]);
}

#[test]
fn state_roundtrip_restores_hyperparameters_and_counters() {
    let mut sp = sparsifier();
    let mut s1 = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(2, 1.5).unwrap()).unwrap();
    for _ in 0..3 {
        sp.step().unwrap();
        let _ = s1.step(&mut sp).unwrap();
    }
    let st = s1.state_dict();
    let mut sp2 = sparsifier();
    let mut s2 = DataScheduler::new(&mut sp2, LEVEL, StepSchedule::new(1, 9.0).unwrap()).unwrap();
    s2.load_state_dict(st.clone()).unwrap();
    assert_eq!(s2.state_dict(), st);
    assert_eq!(s2.schedule(), s1.schedule());

    // Another schedule or parameter is refused, and nothing changes.
    let mut s3 = DataScheduler::new(&mut sp2, LEVEL, Lambda::new(|_| 1.0)).unwrap();
    let before = s3.state_dict();
    assert!(matches!(
        s3.load_state_dict(st.clone()),
        Err(Error::InvalidState { .. })
    ));
    assert_eq!(s3.state_dict(), before);
    // Malformed hyper-parameters are refused too.
    let mut bad = st;
    bad.schedule_state = serde_json::json!({"step_size": 0, "gamma": 1.0});
    assert!(s2.load_state_dict(bad).is_err());
}

#[test]
fn resume_from_file_continues_exactly() {
    fn run(
        sp: &mut DataSparsifier<Magnitude>,
        s: &mut DataScheduler<Level, ZhuGupta>,
        epochs: std::ops::Range<u64>,
    ) {
        for e in epochs {
            // the data "trains": deterministic per epoch
            for (i, name) in ["a", "b"].into_iter().enumerate() {
                let n = if i == 0 { 4 } else { 6 };
                let t = data_sparsifier::random::randn([n, n], DType::F32, 100 + e * 7 + i as u64);
                sp.add_data(name, t).unwrap();
            }
            sp.step().unwrap();
            let _ = s.step(sp).unwrap();
        }
    }
    let zg = ZhuGupta::new(Some(0.05), 0.9, 1, 4, 2).unwrap(); // ends at step 9
    let mut sp_full = sparsifier();
    let mut s_full = DataScheduler::new(&mut sp_full, LEVEL, zg).unwrap();
    run(&mut sp_full, &mut s_full, 0..9);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let mut sp_a = sparsifier();
    let mut s_a = DataScheduler::new(&mut sp_a, LEVEL, zg).unwrap();
    run(&mut sp_a, &mut s_a, 0..4);
    s_a.save_state(&sp_a, &path).unwrap();
    drop((sp_a, s_a));

    let mut sp_b = DataSparsifier::new(Magnitude, Level { level: 0.2 }).unwrap();
    let mut s_b =
        DataScheduler::new(&mut sp_b, LEVEL, ZhuGupta::new(None, 0.1, 0, 1, 1).unwrap()).unwrap();
    s_b.load_state(&mut sp_b, &path, LoadOptions::default())
        .unwrap();
    assert_eq!(s_b.schedule(), &zg);
    run(&mut sp_b, &mut s_b, 4..9);

    assert_eq!(s_b.state_dict(), s_full.state_dict());
    assert_eq!(sp_b.state_dict().unwrap(), sp_full.state_dict().unwrap());
}

#[test]
fn counters_at_their_maximum_are_an_error_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.safetensors");
    let sched = |sp: &mut DataSparsifier<Magnitude>| {
        DataScheduler::new(sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap()
    };
    let mut sp = sparsifier();
    let s = sched(&mut sp);
    for (last_epoch, step_count) in [(i64::MAX, 5), (3, u64::MAX), (i64::MAX, u64::MAX)] {
        // A crafted state file.
        let mut st = s.state_dict();
        st.last_epoch = last_epoch;
        st.step_count = step_count;
        let extra = std::collections::BTreeMap::from([(
            data_sparsifier::scheduler::STATE_KEY.to_string(),
            serde_json::to_value(&st).unwrap(),
        )]);
        sp.save_state_with_extra(&path, &extra).unwrap();

        let mut sp2 = sparsifier();
        let mut s2 = sched(&mut sp2);
        s2.load_state(&mut sp2, &path, LoadOptions::default())
            .unwrap();
        sp2.step().unwrap();
        let before = (levels(&sp2), s2.state_dict());
        let err = s2.step(&mut sp2).unwrap_err();
        assert!(matches!(err, Error::InvalidState { .. }), "{err}");
        assert!(err.to_string().contains("maximum"), "{err}");
        assert_eq!((levels(&sp2), s2.state_dict()), before);
    }
    // One below the maximum still steps, to the maximum.
    let mut sp2 = sparsifier();
    let mut s2 = sched(&mut sp2);
    let mut st = s.state_dict();
    st.last_epoch = i64::MAX - 1;
    st.step_count = u64::MAX - 1;
    s2.load_state_dict(st).unwrap();
    sp2.step().unwrap();
    let _ = s2.step(&mut sp2).unwrap();
    assert_eq!((s2.last_epoch(), s2.step_count()), (i64::MAX, u64::MAX));
    assert_eq!(levels(&sp2), vec![0.4, 0.8]);
}

#[test]
fn load_state_without_scheduler_part_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.safetensors");
    let sp = sparsifier();
    sp.save_state(&path).unwrap();
    let mut sp2 = sparsifier();
    sp2.add_data("extra", Tensor::zeros(DType::F32, [1, 1]))
        .unwrap();
    let mut s = DataScheduler::new(&mut sp2, LEVEL, StepSchedule::new(1, 1.0).unwrap()).unwrap();
    let before = (sp2.state_dict().unwrap(), s.state_dict());
    assert!(s
        .load_state(&mut sp2, &path, LoadOptions::default())
        .is_err());
    assert_eq!((sp2.state_dict().unwrap(), s.state_dict()), before);
}

#[test]
fn json_roundtrip_of_levels_is_exact() {
    // Exact resume needs f64 to survive the JSON in the state file bit for bit.
    for x in [
        0.1 + 0.2,
        1.0 / 3.0,
        0.7 * 0.5 * 0.5,
        f64::MIN_POSITIVE,
        0.123_456_789_012_345_67,
    ] {
        let v = serde_json::to_string(&x).unwrap();
        assert_eq!(
            serde_json::from_str::<f64>(&v).unwrap().to_bits(),
            x.to_bits()
        );
    }
}

#[test]
fn step_schedule_matches_the_callback_test_formula_until_clamped() {
    // PyTorch's check: log(last) == log(base * gamma^last_epoch); here min(1, ...).
    let mut sp = DataSparsifier::new(Magnitude, Level { level: 0.05 }).unwrap();
    sp.add_data("a", Tensor::zeros(DType::F32, [2, 2])).unwrap();
    let mut s = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
    for _ in 0..7 {
        sp.step().unwrap();
        let _ = s.step(&mut sp).unwrap();
        let want = (0.05 * 2f64.powi(s.last_epoch() as i32)).min(1.0);
        assert_eq!(s.last_value("a").unwrap(), want);
    }
}
