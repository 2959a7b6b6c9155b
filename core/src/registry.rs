//! What every process of a binary can run, by name: remote functions, actor constructors and
//! actor methods, registered at link time by the `#[remote]` and `#[actor]` macros.

use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::TaskError;
use crate::codec::{ArgValue, Encoded};

/// Runs a remote function on decoded arguments.
pub type Call = fn(&[ArgValue]) -> Result<Vec<Encoded>, TaskError>;
/// Makes an actor's instance.
pub type Construct = fn(&[ArgValue]) -> Result<Box<dyn Any + Send>, TaskError>;
/// Runs an actor method on its instance.
pub type Method = fn(&mut (dyn Any + Send), &[ArgValue]) -> Result<Vec<Encoded>, TaskError>;

/// A function registered with `#[remote]`.
pub struct RemoteFunction {
    /// Its module path and name.
    pub name: &'static str,
    /// What runs it.
    pub call: Call,
}

/// An actor constructor registered with `#[actor]`.
pub struct ActorConstructor {
    /// `module::Type::function`.
    pub name: &'static str,
    /// What runs it.
    pub call: Construct,
}

/// An actor method registered with `#[actor]`.
pub struct ActorMethod {
    /// `module::Type::method`.
    pub name: &'static str,
    /// What runs it.
    pub call: Method,
}

inventory::collect!(RemoteFunction);
inventory::collect!(ActorConstructor);
inventory::collect!(ActorMethod);

struct Registry {
    functions: HashMap<&'static str, Call>,
    constructors: HashMap<&'static str, Construct>,
    methods: HashMap<&'static str, Method>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        functions: inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
        constructors: inventory::iter::<ActorConstructor>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
        methods: inventory::iter::<ActorMethod>
            .into_iter()
            .map(|f| (f.name, f.call))
            .collect(),
    })
}

/// The remote function registered as `name`.
pub fn function(name: &str) -> Option<Call> {
    registry().functions.get(name).copied()
}

/// The actor constructor registered as `name`.
pub fn constructor(name: &str) -> Option<Construct> {
    registry().constructors.get(name).copied()
}

/// The actor method registered as `name`.
pub fn method(name: &str) -> Option<Method> {
    registry().methods.get(name).copied()
}
