//! `mesh-certs`: makes the development PKI and bearer tokens for the mesh.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_certs::{
    DEFAULT_CA_NAME, DEFAULT_LEAF_DAYS, DEFAULT_NAMES, DEFAULT_OPERATORS, Options, Owner,
    write_dev_pki, write_token,
};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-certs",
    version,
    about = "Makes the mesh's development PKI: a CA, an mTLS certificate per process, the broker's log.key, and bearer tokens",
    long_about = "Makes the mesh's development PKI: a CA, an mTLS certificate per process \
(every certificate is valid for both serverAuth and clientAuth), the broker's at-rest \
encryption key file log.key, and bearer tokens.\n\nEvery command is idempotent: existing \
files are kept (keys and log.key are never overwritten), missing ones are made, and what \
was created or kept is printed. Secrets are never printed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes ca.crt, ca.key, <name>.crt and <name>.key per name, and log.key into --out.
    #[command(after_help = "Examples:\n  \
mesh-certs dev --out deploy/certs\n  \
mesh-certs dev --out /certs --service-owner 65532:65532   # in a root one-shot container\n  \
mesh-certs dev --out certs --names broker,orders --days 30\n\n\
To renew a certificate, delete <name>.crt and run again (the key is kept). To \
replace a key, delete <name>.key and <name>.crt. To replace the CA, delete ca.crt \
and ca.key: every certificate is then reissued for its existing key.")]
    Dev {
        /// Output folder (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Principal names to make certificates for.
        #[arg(long, value_delimiter = ',', value_name = "A,B,C", default_values_t = DEFAULT_NAMES.iter().map(|n| n.to_string()))]
        names: Vec<String>,
        /// Which names are human operators: their keys go to the owner of --out, not to --service-owner.
        #[arg(long, value_delimiter = ',', value_name = "A,B", default_values_t = DEFAULT_OPERATORS.iter().map(|n| n.to_string()))]
        operators: Vec<String>,
        /// Owner of the service keys and log.key (made mode 0400); applied only when run as root.
        /// The CA key, operator keys and certificates go to the owner of --out.
        #[arg(long, value_name = "UID:GID")]
        service_owner: Option<String>,
        /// Lifetime of newly issued certificates, in days.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
        /// Common name of the CA, if one is made.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_CA_NAME)]
        ca_name: String,
    },
    /// Writes <DIR>/<NAME>.token (mode 0600) and appends "NAME sha256:<hex>" to <DIR>/tokens.
    #[command(after_help = "Examples:\n  \
mesh-certs token console --out deploy/certs\n  \
mesh-certs token ci --out /certs --owner 1000:1000\n\n\
The token file holds 64 hex characters and no newline; the broker's tokens file \
holds only SHA-256 hashes of tokens. The token itself is never printed. Running \
it again for the same name keeps the token. To revoke a token, delete its line \
from tokens; to replace it, also delete <NAME>.token and run again.")]
    Token {
        /// The principal the token stands for.
        name: String,
        /// Output folder (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Owner of <NAME>.token; applied only when run as root.
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("mesh-certs: error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), mesh_certs::CertsError> {
    match cli.command {
        Command::Dev {
            out,
            names,
            operators,
            service_owner,
            days,
            ca_name,
        } => {
            let options = Options {
                names,
                operators,
                days,
                service_owner: service_owner.map(|o| o.parse::<Owner>()).transpose()?,
                ca_name,
            };
            let report = write_dev_pki(&out, &options)?;
            print!("{report}");
        }
        Command::Token { name, out, owner } => {
            let owner = owner.map(|o| o.parse::<Owner>()).transpose()?;
            let report = write_token(&out, &name, owner)?;
            print!("{report}");
        }
    }
    Ok(())
}
