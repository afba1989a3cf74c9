//! `--dump-passes DIR`: the graph after every pass, as files whose names carry the pass order
//! and name: `NN_<pass>.ir.txt` (the IR), `NN_<pass>.dot` (Graphviz), and, once the graph can be
//! lowered (after `lower_group_norm`), `NN_<pass>.mil.txt` and `NN_<pass>.mlpackage`, which Netron
//! opens.

use crate::ir::{dot::to_dot, print::print, Graph};
use crate::mil::lower::{lower, FeatureTypes, ModelInfo};
use crate::mil::print::print_model;
use crate::mil::Target;
use std::path::{Path, PathBuf};

pub struct Dumper {
    dir: PathBuf,
    index: usize,
    target: Target,
    iface: FeatureTypes,
    error: Option<std::io::Error>,
}

impl Dumper {
    pub fn new(dir: &Path, target: Target, iface: FeatureTypes) -> std::io::Result<Dumper> {
        std::fs::create_dir_all(dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Dumper {
            dir: dir.to_path_buf(),
            index: 0,
            target,
            iface,
            error: None,
        })
    }

    /// Writes the dumps of `g` after `pass`. The first failure is kept for [`Dumper::finish`].
    pub fn dump(&mut self, pass: &str, g: &Graph) {
        if self.error.is_some() {
            return;
        }
        let stem = self.dir.join(format!("{:02}_{pass}", self.index));
        self.index += 1;
        if let Err(e) = self.write(&stem, g) {
            self.error = Some(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", stem.display()),
            ));
        }
    }

    fn write(&self, stem: &Path, g: &Graph) -> std::io::Result<()> {
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
        std::fs::write(with("ir.txt"), print(g))?;
        std::fs::write(with("dot"), to_dot(g))?;
        // Graphs that still hold ops without a MIL form (group_norm before its lowering) have
        // only the IR dumps.
        if let Ok(l) = lower(g, self.target, &ModelInfo::default(), &self.iface) {
            std::fs::write(with("mil.txt"), print_model(&l.model))?;
            crate::package::write_package(&with("mlpackage"), &l.model, l.weight_bin.as_deref())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    pub fn finish(self) -> std::io::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}
