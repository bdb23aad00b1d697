//! Identifier newtypes, so a batch id can never be passed where a file id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh time-ordered id (UUIDv7), so B-tree inserts stay local and ids sort by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// An uploaded input file, or the virtual output or error file of a batch.
    FileId
);
id_type!(
    /// One parsed input line.
    TemplateId
);
id_type!(
    /// One execution of an input file.
    BatchId
);
id_type!(
    /// One template inside one batch.
    RequestId
);
id_type!(
    /// A registered worker process.
    DaemonId
);
id_type!(
    /// One step of a multi-step response.
    StepId
);
