use clap::Parser;

// Big evaluator buffers on huge pages: see the module doc.
#[global_allocator]
static ALLOC: mlc::huge_pages::HugePageAlloc = mlc::huge_pages::HugePageAlloc;

fn main() -> std::process::ExitCode {
    // Die quietly when a reader closes the pipe (`mlc inspect x | head`), as Unix tools do,
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = mlc::cli::Cli::parse();
    match mlc::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause chain, outermost first. Many errors already end with their
            // source's text (`{path}: {source}`); such a cause is not repeated.
            let mut line = String::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if line.ends_with(&text) {
                    continue;
                }
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&text);
            }
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
