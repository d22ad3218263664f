//! What `/healthz` and `/readyz` say beyond "the process answers": the
//! state of each dependency the server was started with (the cluster
//! bridge). A dependency reports; it never decides liveness, since a node
//! keeps serving its local clients whatever its dependencies do.

use std::fmt;
use std::sync::Arc;

/// One dependency's state, as the health endpoints show it.
pub trait Dependency: Send + Sync + fmt::Debug {
    /// The key it is shown under (`"cluster"`).
    fn name(&self) -> &'static str;
    /// A JSON object with at least `"state"`.
    fn report(&self) -> serde_json::Value;
    /// Whether the node should be sent new clients.
    fn is_ready(&self) -> bool;
    /// Every value `report()["state"]` can take, for a metric per state.
    fn states(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The dependencies of one server.
#[derive(Debug, Clone, Default)]
pub struct Health {
    dependencies: Vec<Arc<dyn Dependency>>,
}

impl Health {
    pub fn with(mut self, dependency: Arc<dyn Dependency>) -> Health {
        self.dependencies.push(dependency);
        self
    }

    pub fn dependencies(&self) -> &[Arc<dyn Dependency>] {
        &self.dependencies
    }

    pub fn is_ready(&self) -> bool {
        self.dependencies.iter().all(|dependency| dependency.is_ready())
    }

    /// `{"status": .., <name>: <report>, ..}` with `status` as given.
    pub fn body(&self, status: &str) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("status".into(), status.into());
        for dependency in &self.dependencies {
            body.insert(dependency.name().into(), dependency.report());
        }
        body.into()
    }
}
