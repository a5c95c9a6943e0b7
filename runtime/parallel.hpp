#pragma once
// Running independent jobs (kernel compiles) on several host threads at once.
#include <cstddef>
#include <functional>

namespace moejit {

// One job a CPU this process may run on, at most `jobs` (and at least 1): what `jobs` = 0 asks for.
unsigned default_jobs(size_t jobs);

// Runs task(0) .. task(count - 1), each once, on up to `jobs` threads (0: default_jobs(count)), the
// calling thread among them. Every task runs even where one throws; then the exception of the
// lowest-numbered task that threw is rethrown, so a failure reads the same at any thread count.
void run_in_parallel(size_t count, unsigned jobs, const std::function<void(size_t)>& task);

}  // namespace moejit
