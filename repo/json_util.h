// Reading integer fields of the JSON records pgbackfs stores (snapshot and clone records,
// pgbackfs.json). nlohmann::json converts a floating-point number to an integer type with a
// plain cast, which is undefined behaviour when the value does not fit (a damaged record's
// 1e300), and wraps integers that do not fit the field. These helpers accept only JSON integers
// within T's range, and throw std::invalid_argument otherwise (the decoders catch
// std::exception and return Corruption).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>

namespace pgbackfs {

// The integer at j[key]; throws if it is missing, not an integer, or out of T's range.
template <typename T>
T JsonInt(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  bool fits = v.is_number_unsigned()  ? std::in_range<T>(v.get<uint64_t>())
              : v.is_number_integer() ? std::in_range<T>(v.get<int64_t>())
                                      : false;
  if (!fits) throw std::invalid_argument(std::string("'") + key + "' is not a valid integer");
  return v.is_number_unsigned() ? static_cast<T>(v.get<uint64_t>())
                                : static_cast<T>(v.get<int64_t>());
}

// The same, or `fallback` if `key` is absent.
template <typename T>
T JsonIntOr(const nlohmann::json& j, const char* key, T fallback) {
  if (!j.is_object() || !j.contains(key)) return fallback;
  return JsonInt<T>(j, key);
}

}  // namespace pgbackfs
