//! Which prefix a model's tensors sit under in a file that may hold other models too: the one
//! key-placement rule every family uses before reading its part through [`super::Under`].
//!
//! A family names the keys only it has (its anchors: `decoder.conv_in.weight` for a VAE,
//! `embeddings.token_embedding.weight` for a CLIP text model) and the prefixes it is known
//! under (`first_stage_model.` in an SD checkpoint), or accepts any prefix; the prefix a file
//! uses is what precedes an anchor. Renaming the keys under it (the original VAE layout to
//! diffusers', TAESD's indices) stays with the family.

/// Where one model sits among a file's keys.
#[derive(Clone, Copy, Debug)]
pub struct KeyPlacement<'a> {
    /// Key suffixes only this model has; any one of them marks where it is.
    pub anchors: &'a [&'a str],
    /// The prefixes it may sit under (`""` for none); empty: any prefix ending in `.`.
    pub prefixes: &'a [&'a str],
}

/// Why no one prefix was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// No key ends in an anchor under an allowed prefix.
    Absent,
    /// The model is there under each of these prefixes (sorted).
    Several(Vec<String>),
}

impl KeyPlacement<'_> {
    /// The one prefix under which the model's anchors appear among `keys`.
    pub fn find<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Result<String, PrefixError> {
        let mut found = std::collections::BTreeSet::new();
        for k in keys {
            for a in self.anchors {
                let Some(p) = k.strip_suffix(a) else {
                    continue;
                };
                let allowed = if self.prefixes.is_empty() {
                    p.is_empty() || p.ends_with('.')
                } else {
                    self.prefixes.contains(&p)
                };
                if allowed {
                    found.insert(p.to_string());
                }
            }
        }
        let mut found = found.into_iter();
        match (found.next(), found.len()) {
            (None, _) => Err(PrefixError::Absent),
            (Some(p), 0) => Ok(p),
            (Some(p), _) => Err(PrefixError::Several(
                std::iter::once(p).chain(found).collect(),
            )),
        }
    }
}

impl PrefixError {
    /// `"a.", "b."`: the prefixes as messages list them.
    pub fn prefixes(&self) -> String {
        match self {
            PrefixError::Absent => String::new(),
            PrefixError::Several(ps) => super::quoted(ps),
        }
    }
}
