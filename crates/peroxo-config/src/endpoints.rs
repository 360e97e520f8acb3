//! `storage.endpoint`: one storage service URL, or a list of them that a gateway fails over
//! between (`endpoint = ["http://10.0.0.5:50051", "http://10.0.0.6:50051"]`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The storage services a gateway may use, in the order it tries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEndpoints(Vec<String>);

impl StorageEndpoints {
    pub fn urls(&self) -> &[String] {
        &self.0
    }
}

impl From<String> for StorageEndpoints {
    fn from(url: String) -> Self {
        Self(vec![url])
    }
}

impl From<Vec<String>> for StorageEndpoints {
    fn from(urls: Vec<String>) -> Self {
        Self(urls)
    }
}

impl fmt::Display for StorageEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// Written as it is most often meant: one URL as a string, several as a list.
impl Serialize for StorageEndpoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StorageEndpoints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a URL or a list of URLs")]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(url) => Self(vec![url]),
            OneOrMany::Many(urls) => Self(urls),
        })
    }
}
