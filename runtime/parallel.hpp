#pragma once
// Running independent jobs (kernel compiles) on several host threads at once.
#include <cstddef>
#include <functional>

namespace moejit {

// Threads for `tasks` tasks where the caller asks for no number: one a CPU this process may run
// on, at most kMaxDefaultJobs and at most `tasks` (at least 1).
inline constexpr unsigned kMaxDefaultJobs = 32;
unsigned default_jobs(size_t tasks);

// Runs task(0) .. task(count - 1), each once, on up to `jobs` threads (0: default_jobs(count)), the
// calling thread among them. Every task runs even where one throws; then the exception of the
// lowest-numbered task that threw is rethrown, so a failure reads the same at any thread count.
// Returns the number of threads that ran tasks.
// The helper threads get kHelperStackBytes of stack: NVRTC's front end runs deep on template-heavy
// code, and a thread's default stack can be as small as 2 MiB (glibc under `ulimit -s unlimited`).
inline constexpr size_t kHelperStackBytes = size_t(64) << 20;
size_t run_in_parallel(size_t count, unsigned jobs, const std::function<void(size_t)>& task);

}  // namespace moejit
