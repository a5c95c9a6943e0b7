#include <moejit/version.hpp>

namespace moejit {

const char* library_version() { return MOEJIT_VERSION_STRING; }

}  // namespace moejit
