//! `reposure-mount`: see the library.

fn main() {
    reposure_mount::main(std::env::args_os().skip(1).collect())
}
