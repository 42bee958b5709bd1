//! The job kinds this build offers.

use std::collections::BTreeMap;

use rlt_types::JobKindInfo;

use super::kind::SharedKind;

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, SharedKind>,
}

impl Registry {
    /// Every kind of this build. A new kind is one module plus one line here.
    pub fn standard() -> Self {
        Registry::default()
            .with(std::sync::Arc::new(super::kinds::generate::Generate))
            .with(std::sync::Arc::new(super::kinds::score::Score))
    }

    pub fn with(mut self, kind: SharedKind) -> Self {
        self.kinds.insert(kind.name(), kind);
        self
    }

    pub fn get(&self, name: &str) -> Option<&SharedKind> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().map(|k| (*k).to_owned()).collect()
    }

    pub fn describe(&self) -> Vec<JobKindInfo> {
        self.kinds
            .values()
            .map(|k| JobKindInfo {
                name: k.name().to_owned(),
                description: k.description().to_owned(),
                params_schema: k.params_schema(),
            })
            .collect()
    }
}
