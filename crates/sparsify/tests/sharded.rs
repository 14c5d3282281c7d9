//! Sharded checkpoints (`model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`)
//! through the real binary: the output's shards, index and commit, and every bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const SHARDS: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

/// The standard checkpoint split over three shards (2, 3 and 2 tensors), with an index, and the
/// same tensors as one file `whole.safetensors` beside the folder.
fn sharded_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    let mut all = checkpoint();
    let whole = dir.path().join("whole.safetensors");
    write(&whole, &all, &[("format", "pt")]);
    let third = all.split_off(5);
    let second = all.split_off(2);
    let mut map = serde_json::Map::new();
    for (file, part) in SHARDS.iter().zip([&all, &second, &third]) {
        write(&ck.join(file), part, &[("format", "pt")]);
        for t in part.iter() {
            map.insert(t.name.to_string(), Value::from(*file));
        }
    }
    let index =
        serde_json::json!({"metadata": {"total_size": 1, "note": "kept"}, "weight_map": map});
    std::fs::write(
        ck.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    (dir, ck, whole)
}

/// Every tensor of the safetensors files of `dir` listed by its index: name → (file, bytes).
fn read_sharded(dir: &Path) -> (Value, BTreeMap<String, (String, Vec<u8>)>) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let mut out = BTreeMap::new();
    let mut files: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    files.sort();
    files.dedup();
    for f in files {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(index["weight_map"][&name], f, "{name} is in {f}");
            out.insert(name, (f.to_string(), view.data().to_vec()));
        }
    }
    (index, out)
}

#[test]
fn a_sharded_checkpoint_becomes_the_same_shards_with_a_new_index() {
    let (dir, ck, whole) = sharded_setup();
    let (out, masks, state) = (
        dir.path().join("out"),
        dir.path().join("masks"),
        dir.path().join("state.safetensors"),
    );
    let cfg = dir.path().join("c.toml");
    // An override by name reaches a tensor in the last shard.
    std::fs::write(&cfg, "[tensors.\"late\"]\nsparsity_level = 0.25\n").unwrap();
    let common = ["--tensors", "*", "--exclude", "ids", "--exclude", "pad"];
    let mut args = vec!["run", s(&ck), "-o", s(&out), "--masks", s(&masks)];
    args.extend([
        "--state",
        s(&state),
        "--config",
        s(&cfg),
        "-q",
        "--report",
        "json",
    ]);
    args.extend(common);
    let report: Value = serde_json::from_str(&ok_stdout(&args)).unwrap();
    assert_eq!(report["totals"]["shards"], 3);
    assert_eq!(report["totals"]["sparsified"], 5);
    let late = reported(&report, "late");
    assert_eq!(late["shard"], SHARDS[2]);
    assert_eq!(late["config"]["sparsity_level"], 0.25);
    assert_eq!(
        report["index"],
        s(&out.join("model.safetensors.index.json"))
    );

    // The same run over the one-file checkpoint: the same bytes, tensor by tensor.
    let (one, one_masks) = (dir.path().join("one.st"), dir.path().join("one_m.st"));
    let mut args1 = vec!["run", s(&whole), "-o", s(&one), "--masks", s(&one_masks)];
    args1.extend(["--config", s(&cfg), "-q"]);
    args1.extend(common);
    ok_stdout(&args1);
    let single = std::fs::read(&one).unwrap();
    let single = SafeTensors::deserialize(&single).unwrap();
    let (index, tensors) = read_sharded(&out);
    assert_eq!(tensors.len(), 7);
    for (name, (_, bytes)) in &tensors {
        assert_eq!(
            single.tensor(name).unwrap().data(),
            bytes.as_slice(),
            "{name}"
        );
    }
    // The layout is the input's; the index keeps its metadata, with total_size recounted.
    let (in_index, _) = read_sharded(&ck);
    assert_eq!(index["weight_map"], in_index["weight_map"]);
    assert_eq!(names(&out), {
        let mut v: Vec<String> = SHARDS.iter().map(|f| f.to_string()).collect();
        v.push("model.safetensors.index.json".into());
        v.sort();
        v
    });
    let total: usize = tensors.values().map(|(_, b)| b.len()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(index["metadata"]["note"], "kept");
    assert_eq!(index["metadata"]["sparsify"]["tool"], "sparsify");
    // Each shard keeps its own metadata and names its own sparsified tensors.
    let b = std::fs::read(out.join(SHARDS[2])).unwrap();
    let (_, meta) = header(&b);
    assert_eq!(meta["format"], "pt");
    let sp: Value = serde_json::from_str(&meta["sparsify"]).unwrap();
    let named: Vec<&String> = sp["tensors"].as_object().unwrap().keys().collect();
    assert_eq!(named, ["late"]);

    // Masks: one shard per input shard with a sparsified tensor, equal to the one-file masks.
    let (mindex, mtensors) = read_sharded(&masks);
    let one_masks = std::fs::read(&one_masks).unwrap();
    let one_masks = SafeTensors::deserialize(&one_masks).unwrap();
    assert_eq!(mtensors.len(), 5);
    for (name, (_, bytes)) in &mtensors {
        assert_eq!(one_masks.tensor(name).unwrap().data(), bytes.as_slice());
    }
    assert_eq!(mindex["weight_map"]["late"], SHARDS[2]);
    assert!(state.is_file());

    // The index path works as the folder does, and inspect reads both.
    let out2 = dir.path().join("out2");
    let idx = ck.join("model.safetensors.index.json");
    let mut args2 = vec!["run", s(&idx), "-o", s(&out2), "--config", s(&cfg), "-q"];
    args2.extend(common);
    ok_stdout(&args2);
    let (_, again) = read_sharded(&out2);
    assert_eq!(again, tensors);
    let insp: Value =
        serde_json::from_str(&ok_stdout(&["inspect", s(&out), "--report", "json"])).unwrap();
    assert_eq!(insp["totals"]["shards"], 3);
    assert_eq!(insp["totals"]["tensors"], 7);
    assert_eq!(insp["tensors"][6]["shard"], SHARDS[2]);
    assert_eq!(insp["metadata"]["note"], "kept");
    let text = ok_stdout(&["inspect", s(&idx)]);
    assert!(
        text.contains("in 3 shards") && text.contains(SHARDS[1]),
        "{text}"
    );

    // A compact output: every shard compact, its index naming the stored parts.
    let out3 = dir.path().join("out3");
    let mut args3 = vec!["run", s(&ck), "-o", s(&out3), "--format", "compact", "-q"];
    args3.extend(["--quantize", "int8"]);
    ok_stdout(&args3);
    let (cindex, ctensors) = read_sharded(&out3);
    assert!(ctensors.keys().any(|n| n.starts_with("z.emb")));
    assert!(
        !ctensors.contains_key("z.emb"),
        "stored as its compact parts"
    );
    assert_eq!(
        cindex["metadata"]["total_size"],
        ctensors.values().map(|(_, b)| b.len()).sum::<usize>()
    );
    let insp: Value =
        serde_json::from_str(&ok_stdout(&["inspect", s(&out3), "--report", "json"])).unwrap();
    assert!(!insp["compact"].as_array().unwrap().is_empty());
}

/// Rewrites the index of `ck` with `f` applied to its JSON.
fn edit_index(ck: &Path, f: impl FnOnce(&mut Value)) {
    let p = ck.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_sharded_input_is_a_one_line_error_and_writes_nothing() {
    let check = |prepare: &dyn Fn(&Path), expect: &[&str]| {
        let (dir, ck, _) = sharded_setup();
        prepare(&ck);
        let out = dir.path().join("out");
        for args in [
            vec!["run", s(&ck), "-o", s(&out), "-q"],
            vec!["inspect", s(&ck)],
        ] {
            let e = fails(&args);
            for x in expect {
                assert!(e.contains(x), "{args:?}: {e} lacks {x}");
            }
            assert!(!out.exists(), "nothing written: {args:?}");
        }
    };
    // A missing shard.
    check(
        &|ck| std::fs::remove_file(ck.join(SHARDS[1])).unwrap(),
        &[SHARDS[1], "does not exist", "restore it"],
    );
    // A tensor named twice in the index.
    check(
        &|ck| {
            let p = ck.join("model.safetensors.index.json");
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.replacen(
                "\"weight_map\": {",
                &format!("\"weight_map\": {{\"late\": \"{}\",", SHARDS[0]),
                1,
            );
            std::fs::write(&p, text).unwrap();
        },
        &["\"late\" is named twice", "remove one"],
    );
    // The index names a tensor its shard does not hold.
    check(
        &|ck| edit_index(ck, |v| v["weight_map"]["ghost"] = Value::from(SHARDS[0])),
        &["\"ghost\"", SHARDS[0], "does not hold it"],
    );
    // A tensor in the wrong shard, and one stored twice.
    check(
        &|ck| edit_index(ck, |v| v["weight_map"]["late"] = Value::from(SHARDS[0])),
        &["\"late\"", SHARDS[0], "does not hold it"],
    );
    check(
        &|ck| {
            let mut first = checkpoint();
            first.truncate(2);
            first.push(t("late", Dtype::F32, &[10, 8], 7));
            write(&ck.join(SHARDS[0]), &first, &[]);
        },
        &["\"late\"", "maps it to shard", SHARDS[2]],
    );
    // A shard holding a tensor the index does not name.
    check(
        &|ck| {
            edit_index(ck, |v| {
                v["weight_map"].as_object_mut().unwrap().remove("late");
            })
        },
        &["\"late\"", "does not name"],
    );
    // A shard outside the folder, malformed JSON, no weight_map, a truncated shard.
    check(
        &|ck| {
            edit_index(ck, |v| {
                v["weight_map"]["late"] = Value::from("../whole.safetensors")
            })
        },
        &["not a file name"],
    );
    check(
        &|ck| {
            std::fs::write(
                ck.join("model.safetensors.index.json"),
                "{\"weight_map\": {",
            )
            .unwrap()
        },
        &["not a valid index"],
    );
    check(
        &|ck| std::fs::write(ck.join("model.safetensors.index.json"), "{}").unwrap(),
        &["no \"weight_map\""],
    );
    check(
        &|ck| {
            let p = ck.join(SHARDS[2]);
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 5]).unwrap();
        },
        &[SHARDS[2]],
    );
    // A folder without an index, and one with two.
    check(
        &|ck| std::fs::remove_file(ck.join("model.safetensors.index.json")).unwrap(),
        &["without a *.safetensors.index.json"],
    );
    check(
        &|ck| {
            std::fs::copy(
                ck.join("model.safetensors.index.json"),
                ck.join("other.safetensors.index.json"),
            )
            .unwrap();
        },
        &["holds 2 indexes", "give the index file"],
    );
}

#[test]
fn sharded_outputs_are_folders_other_than_the_input_and_commit_all_or_nothing() {
    let (dir, ck, whole) = sharded_setup();
    // --output a file, or the input's own folder.
    let e = fails(&["run", s(&ck), "-o", s(&whole), "-q"]);
    assert!(e.contains("is a file") && e.contains("folder"), "{e}");
    let e = fails(&["run", s(&ck), "-o", s(&ck), "-q"]);
    assert!(e.contains("the input's folder"), "{e}");
    let idx = ck.join("model.safetensors.index.json");
    let e = fails(&["run", s(&idx), "-o", s(&ck), "-q"]);
    assert!(e.contains("the input's folder"), "{e}");
    let out = dir.path().join("out");
    let e = fails(&["run", s(&ck), "-o", s(&out), "--masks", s(&out), "-q"]);
    assert!(e.contains("--masks"), "{e}");
    let e = fails(&["run", s(&ck), "-o", s(&dir.path().join("no/such")), "-q"]);
    assert!(e.contains("create"), "{e}");

    // An existing shard in the output folder: refused without --force, nothing else written.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(SHARDS[1]), b"old").unwrap();
    let e = fails(&["run", s(&ck), "-o", s(&out), "-q"]);
    assert!(e.contains(SHARDS[1]) && e.contains("--force"), "{e}");
    assert_eq!(names(&out), [SHARDS[1]]);

    // NaN in the last shard: the run fails after streaming the first two shards, and leaves
    // neither shards nor temp files nor the folder it created.
    let mut last = checkpoint().split_off(5);
    last[1].bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&ck.join(SHARDS[2]), &last, &[]);
    let fresh = dir.path().join("fresh");
    let masks = dir.path().join("m");
    let e = fails(&["run", s(&ck), "-o", s(&fresh), "--masks", s(&masks), "-q"]);
    assert!(e.contains("NaN") && e.contains("\"late\""), "{e}");
    assert!(!fresh.exists() && !masks.exists());
    // With --force into the existing folder: the old file stays as it was.
    fails(&["run", s(&ck), "-o", s(&out), "--force", "-q"]);
    assert_eq!(names(&out), [SHARDS[1]]);
    assert_eq!(std::fs::read(out.join(SHARDS[1])).unwrap(), b"old");
}
